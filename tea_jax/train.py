"""Training and evaluation: `train_and_evaluate(config, workdir)` and `evaluate_checkpoint`.

The train step is pure and compiled once with `jax.jit` over a `jax.make_mesh` mesh with a `data`
axis: parameters and optimiser state replicated, the batch sharded over devices, the state donated.
The same code runs on 1 CPU, N GPUs and several hosts (`config.distributed` calls
`jax.distributed.initialize`). The epoch-dependent IoU threshold is an argument, so nothing
recompiles between epochs. Training resumes from the latest checkpoint of the workdir.
"""

from __future__ import annotations

import logging
import math
import os
import queue
import threading
import time
from typing import TYPE_CHECKING

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P
from tqdm import tqdm

from tea_jax import checkpointing, files, inference, losses, metrics, optim
from tea_jax.mesh import make_mesh
from tea_jax.model.config import ModelConfig
from tea_jax.model.tea import TEA
from tea_jax.data.schema import data_path

if TYPE_CHECKING:
  from tea_jax.data.input_pipeline import Records

log = logging.getLogger("tea_jax")

# Batch entries the jitted functions read (strings stay on the host).
DEVICE_KEYS = ("video", "narrative", "video_mask", "word_ids", "query_mask", "start_label",
               "end_label", "duration", "valid")


class TrainingDiverged(FloatingPointError):
  """The loss became NaN or inf."""


def check_batch_size(batch_size: int, what: str = "config.batch_size") -> None:
  devices = jax.device_count()
  if batch_size % devices:
    raise ValueError(f"{what}={batch_size} is not divisible by the {devices} devices; use a "
                     f"multiple of {devices}")


def with_data_sizes(config: ml_collections.ConfigDict, records: Records
                    ) -> ml_collections.ConfigDict:
  """The config with the sizes the records imply (vocabulary, feature widths)."""
  config = ml_collections.ConfigDict(config.to_dict())
  meta = records.meta
  config.model.vocab_size = meta["vocab_size"]
  for key in ("video_dim", "word_dim", "narrative_dim"):
    if config.model[key] != meta[key]:
      raise ValueError(f"config.model.{key}={config.model[key]} but the records in "
                       f"{records.records_dir} have {meta[key]}")
  return config


def init_state(config, records: Records, tx, rng: jax.Array) -> tuple[dict, dict]:
  """(variables, train_state) of a fresh run: EMB init, the data's word vectors frozen."""
  variables = inference.init_params(config, rng)
  vectors = records.word_vectors()
  expected = variables["frozen"]["word_embedding"]["word_vectors"].shape
  if vectors.shape != expected:
    raise ValueError(f"word_vectors.npy has shape {vectors.shape}, expected {expected}")
  variables = jax.tree_util.tree_map(np.asarray, variables)
  variables["frozen"]["word_embedding"]["word_vectors"] = vectors
  train_state = {"opt_state": tx.init(variables["params"]), "step": np.zeros((), np.int32)}
  return variables, train_state


def make_train_step(config, tx, mesh):
  """jit(train_step) with replicated state, data-sharded batch and donated state."""
  model = TEA(ModelConfig.from_config(config))
  dropout_key = jax.random.key(config.seed + 1)

  def train_step(variables, train_state, batch, threshold):
    step = train_state["step"]
    rng = jax.random.fold_in(dropout_key, step)

    def loss_fn(params):
      out = model.apply({"params": params, "frozen": variables["frozen"]}, batch, train=True,
                        rngs={"dropout": rng})
      return losses.total_loss(config, out, batch, threshold)

    (loss, parts), grads = jax.value_and_grad(loss_fn, has_aux=True)(variables["params"])
    updates, opt_state = tx.update(grads, train_state["opt_state"], variables["params"])
    params = jax.tree_util.tree_map(jnp.add, variables["params"], updates)
    new_vars = {"params": params, "frozen": variables["frozen"]}
    stats = dict(parts, loss=loss, grad_norm=optax.tree.norm(grads))
    return new_vars, {"opt_state": opt_state, "step": step + 1}, stats

  replicated = NamedSharding(mesh, P())
  data = NamedSharding(mesh, P("data"))
  return jax.jit(train_step, in_shardings=(replicated, replicated, data, replicated),
                 out_shardings=(replicated, replicated, replicated), donate_argnums=(0, 1))


def make_eval_step(config, mesh):
  """jit(forward + decoding) with a data-sharded batch."""
  model = TEA(ModelConfig.from_config(config))

  def eval_step(variables, batch):
    out = model.apply(variables, batch, train=False)
    start, end, score = metrics.decode_spans(out["start_prob"], out["end_prob"])
    return {"start": start, "end": end, "score": score}

  replicated = NamedSharding(mesh, P())
  data = NamedSharding(mesh, P("data"))
  return jax.jit(eval_step, in_shardings=(replicated, data), out_shardings=replicated)


def to_device(batch: dict, mesh, whole: bool = False) -> dict:
  """The jit inputs of a host batch, as global arrays sharded over `data` (multi-host safe).

  Training: each process holds its own slice of the global batch. Evaluation (`whole`): every
  process reads the same full batch and contributes the rows its devices hold.
  """
  sharding = NamedSharding(mesh, P("data"))
  return {k: jax.make_array_from_process_local_data(
      sharding, batch[k], global_shape=batch[k].shape if whole else None)
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


def evaluate_split(eval_step, variables, records: Records, split: str, batch_size: int, mesh,
                   progress: bool = True) -> tuple[dict, list[dict]]:
  """Metrics and per-pair predictions of one split (padding examples not counted)."""
  preds = []
  n = records.size(split)
  for batch in tqdm(records.eval_batches(split, batch_size), total=math.ceil(n / batch_size),
                    desc=f"eval {split}", leave=False, disable=not progress):
    out = jax.device_get(eval_step(variables, to_device(batch, mesh, whole=True)))
    v_len = batch["video_mask"].sum(axis=1)
    start_s, end_s = metrics.index_to_time(out["start"], out["end"], v_len, batch["duration"])
    overlap = metrics.iou(start_s, end_s, batch["start_time"], batch["end_time"])
    for i in np.nonzero(batch["valid"] > 0)[0]:
      preds.append({"video_id": str(batch["video_id"][i]), "query": str(batch["query"][i]),
                    "pair_index": int(batch["pair_index"][i]),
                    "pred_start": float(start_s[i]), "pred_end": float(end_s[i]),
                    "true_start": float(batch["start_time"][i]),
                    "true_end": float(batch["end_time"][i]),
                    "score": float(out["score"][i]), "iou": float(overlap[i])})
  if len(preds) != n:
    raise RuntimeError(f"evaluated {len(preds)} pairs of {split}, expected {n}")
  return metrics.summarise(np.array([p["iou"] for p in preds])), preds


def evaluate_all(config, variables, records: Records, mesh, out_dir: str, step: int,
                 progress: bool = True, eval_step=None) -> dict:
  """Evaluates every configured split; writes metrics.json and predictions_<split>.jsonl."""
  check_batch_size(config.eval_batch_size, "config.eval_batch_size")
  eval_step = eval_step or make_eval_step(config, mesh)
  results = {}
  for split in config.data.eval_splits:
    summary, preds = evaluate_split(eval_step, variables, records, split, config.eval_batch_size,
                                    mesh, progress)
    results[split] = summary
    if is_primary():
      files.write_lines(os.path.join(out_dir, f"predictions_{split}.jsonl"), preds)
  selection = config.data.selection_split
  if is_primary():
    files.write_json(os.path.join(out_dir, "metrics.json"), {
        "step": int(step), "splits": results,
        "selection": f"checkpoint chosen by {config.selection_metric} on split '{selection}'"})
  return results


def is_primary() -> bool:
  """The files beside the checkpoints are written by process 0 only (Orbax coordinates its own)."""
  return jax.process_index() == 0


def _setup(config):
  if config.get("distributed", False) and not jax.distributed.is_initialized():
    # Processes on CPUs exchange gradients over Gloo (GPUs use NCCL whatever this says).
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    # Unset values (None) are left to JAX's cluster detection.
    jax.distributed.initialize(
        coordinator_address=config.get("coordinator_address") or None,
        num_processes=config.get("num_processes") or None,
        process_id=None if config.get("process_id", -1) < 0 else config.process_id)
  check_batch_size(config.batch_size)


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str,
                       progress: bool = True) -> dict:
  """Trains (resuming from workdir), keeps the latest and the best checkpoints, evaluates."""
  # TensorFlow (tf.data, summaries) is imported only where records are read, so that the jitted
  # step and bench/train_step.py run where it is not installed (the GPU image has no TensorFlow).
  from tea_jax.data.input_pipeline import Records  # pylint: disable=import-outside-toplevel
  from tea_jax.writer import MetricWriter  # pylint: disable=import-outside-toplevel
  _setup(config)
  os.makedirs(workdir, exist_ok=True)
  records = Records(data_path(config.data, "records_dir"), config.data)
  config = with_data_sizes(config, records)
  if is_primary():
    files.write_json(os.path.join(workdir, "config.json"), config.to_dict())
    files.write_json(os.path.join(workdir, "vocab.json"),
                     {"size": config.model.vocab_size, "pad_id": 0, "unk_id": 1,
                      "words": records.vocabulary(), "source": records.records_dir})
  mesh = make_mesh()
  n_train = records.size(config.data.train_split)
  steps_per_epoch = math.ceil(n_train / config.batch_size)
  total_steps = config.num_epochs * steps_per_epoch
  tx = optim.make_optimizer(config, total_steps)
  variables, train_state = init_state(config, records, tx, jax.random.key(config.seed))

  latest = checkpointing.steps(workdir)
  if latest:
    restored = checkpointing.restore(workdir, latest[-1], variables_like=variables,
                                     train_state_like=train_state)
    variables, train_state = restored["variables"], restored["train_state"]
    log.info("resumed from step %d of %d", int(train_state["step"]), total_steps)
  step = int(train_state["step"])
  # Committed, replicated inputs from the first step on: the jitted step compiles exactly once.
  replicated = NamedSharding(mesh, P())
  variables, train_state = jax.device_put((variables, train_state), replicated)

  train_step = make_train_step(config, tx, mesh)
  eval_step = make_eval_step(config, mesh)
  writer = MetricWriter(os.path.join(workdir, "tensorboard"), enabled=is_primary())
  best = checkpointing.read_json(os.path.join(workdir, "best.json"), default=None)
  thresholds = losses.numpy_threshold_schedule(config.num_epochs)
  learning_rate = optim.learning_rate_schedule(config, total_steps)
  max_steps = config.get("max_steps", 0) or total_steps
  stop_at = min(total_steps, max_steps)
  last_good = step

  def save(at_step, variables, train_state):
    checkpointing.save(workdir, at_step, variables, train_state, max_to_keep=2)

  batches = prefetch_to_device(
      records.train_batches(config.data.train_split, config.batch_size, config.seed,
                            start_step=step, process_index=jax.process_index(),
                            process_count=jax.process_count()), mesh)
  bar = tqdm(total=stop_at, initial=step, desc="train", unit="step", disable=not progress,
             dynamic_ncols=True)
  started, pending = time.time(), []
  try:
    while step < stop_at:
      epoch = step // steps_per_epoch
      batch = next(batches)
      variables, train_state, stats = train_step(variables, train_state, batch,
                                                 np.float32(thresholds[epoch]))
      pending.append(stats)
      step += 1
      bar.update(1)
      epoch_end = step % steps_per_epoch == 0 or step == stop_at
      if step % config.log_every_steps == 0 or epoch_end:
        host = jax.device_get(pending)
        pending = []
        mean = {k: float(np.mean([s[k] for s in host])) for k in host[0]}
        if not all(math.isfinite(v) for v in mean.values()):
          raise TrainingDiverged(
              f"loss became NaN/inf before step {step} ({mean}); the last good checkpoint "
              f"(step {last_good}) is kept in {workdir}")
        mean.update(learning_rate=float(learning_rate(step - 1)),
                    threshold=float(thresholds[epoch]), epoch=epoch)
        writer.scalars(step, mean, prefix="train/", console=not progress)
        bar.set_postfix(loss=f"{mean['loss']:.3f}", epoch=epoch)
      if epoch_end:
        save(step, variables, train_state)
        last_good = step
        epoch_done = math.ceil(step / steps_per_epoch)
        if epoch_done % config.eval_every_epochs == 0 or step == total_steps:
          split = config.data.selection_split
          summary, _ = evaluate_split(eval_step, variables, records, split, config.eval_batch_size,
                                      mesh, progress=False)
          writer.scalars(step, {k: v for k, v in summary.items() if k != "count"},
                         prefix=f"{split}/", console=not progress)
          value = summary[config.selection_metric]
          if best is None or value > best["value"]:
            best = {"step": step, "epoch": epoch_done, "value": value, "split": split,
                    "metric": config.selection_metric, "metrics": summary}
            checkpointing.save(workdir, step, variables, subdir=checkpointing.BEST_DIR,
                               max_to_keep=1)
            if is_primary():
              files.write_json(os.path.join(workdir, "best.json"), best)
  finally:
    batches.close()  # stops the prefetching thread, also on an error
  bar.close()
  log.info("trained %d steps in %.1fs", step, time.time() - started)
  result = {"step": step, "best": best}
  if step >= total_steps:
    # Restored replicated over this run's mesh: the eval step's input shardings, no recompile.
    best_vars, best_step = checkpointing.restore_variables(workdir)
    result["metrics"] = evaluate_all(config, best_vars, records, mesh, workdir, best_step,
                                     progress, eval_step)
  writer.close()
  return result


def evaluate_checkpoint(config: ml_collections.ConfigDict, workdir: str,
                        step: int | None = None, progress: bool = True) -> dict:
  """Restores the best checkpoint (or `step`) of `workdir` and evaluates every configured split.
  Works on workdirs written by training and by tea_jax.import_emb (then `config` must name data)."""
  from tea_jax.data.input_pipeline import Records  # pylint: disable=import-outside-toplevel
  _setup(config)
  records = Records(data_path(config.data, "records_dir"), config.data)
  saved = checkpointing.read_config(workdir)
  config = ml_collections.ConfigDict(config.to_dict())
  config.model = saved.model  # the checkpoint's architecture wins over the command line
  if config.model.vocab_size != records.meta["vocab_size"]:
    raise ValueError(f"the checkpoint in {workdir} has a vocabulary of {config.model.vocab_size} "
                     f"ids but the records have {records.meta['vocab_size']}")
  variables, step = checkpointing.restore_variables(workdir, step)
  return evaluate_all(config, variables, records, make_mesh(), workdir, step, progress)
