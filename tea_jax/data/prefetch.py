"""Host batches -> global device arrays sharded over the mesh's `data` axis, read ahead in a thread.

No TensorFlow here: the jitted step and the GPU benchmarks import this module where TensorFlow is
not installed.
"""

import logging
import queue
import threading

import jax
import numpy as np
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

log = logging.getLogger("tea_jax")

# Batch entries the jitted functions read (strings stay on the host).
DEVICE_KEYS = ("video", "narrative", "video_mask", "word_ids", "query_mask", "start_label",
               "end_label", "duration", "valid")


def to_device(batch: dict, mesh, whole: bool = False) -> dict:
  """The jit inputs of a host batch, as global arrays sharded over `data` (multi-host safe).

  Training: each process holds its own slice of the global batch. Evaluation (`whole`): every
  process reads the same full batch and contributes the rows its devices hold. Seconds are float64
  on the host (metrics) and float32 on the device (the losses compute in float32, as EMB does).
  """
  sharding = NamedSharding(mesh, P("data"))

  def host(value):
    return value.astype(np.float32) if value.dtype == np.float64 else value

  return {k: jax.make_array_from_process_local_data(
      sharding, host(batch[k]), global_shape=batch[k].shape if whole else None)
          for k in DEVICE_KEYS if k in batch}


def prefetch_to_device(batches, mesh, size: int = 2):
  """Yields `to_device(batch, mesh)` of each host batch, read up to `size` batches ahead.

  A background thread pulls the next batches (tf.data, numpy conversion) and starts their
  host-to-device copies while the device runs the current step, so on a fast accelerator the
  step does not wait for the host. Order is kept; an error of the reader is raised here; closing
  this generator stops the thread and waits for it to end (the batch it is reading at most).
  """
  slots: queue.Queue = queue.Queue(maxsize=size)
  stop = threading.Event()
  done = object()

  def put(item) -> bool:
    # A polling put: a blocking one could not see `stop` while the queue is full.
    while not stop.is_set():
      try:
        slots.put(item, timeout=0.1)
        return True
      except queue.Full:
        continue
    return False

  def work():
    try:
      for batch in batches:
        if not put(to_device(batch, mesh)):
          return
      put(done)
    except BaseException as e:  # pylint: disable=broad-except
      put(e)  # re-raised in the consumer, with its traceback

  thread = threading.Thread(target=work, daemon=True, name="prefetch-to-device")
  thread.start()
  try:
    while True:
      item = slots.get()
      if item is done:
        return
      if isinstance(item, BaseException):
        raise item
      yield item
  finally:
    stop.set()
    thread.join(timeout=60.0)
    if thread.is_alive():
      log.warning("the prefetching thread is still reading a batch 60 s after it was told to stop; "
                  "leaving it (daemon) behind")
