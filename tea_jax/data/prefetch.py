"""Host batches -> global device arrays sharded over the mesh's `data` axis, copied ahead.

No TensorFlow here: the jitted step and the GPU benchmarks import this module where TensorFlow is
not installed.
"""

import collections

import jax
import numpy as np
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

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
  """Yields `to_device(batch, mesh)` of each host batch, `size` batches ahead.

  Copies to the devices are asynchronous, so the next batches travel while the current step runs;
  reading ahead on the host is tf.data's own prefetch (Records' iterators end with it).
  """
  ahead = collections.deque()
  for batch in batches:
    ahead.append(to_device(batch, mesh))
    if len(ahead) > size:
      yield ahead.popleft()
  while ahead:
    yield ahead.popleft()
