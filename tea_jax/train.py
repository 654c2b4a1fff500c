"""Training: `train_and_evaluate(config, workdir)`.

The train step is pure and compiled once with `jax.jit` over a `jax.make_mesh` mesh with a `data`
axis: parameters and optimiser state replicated, the batch sharded over devices, the state donated.
The same code runs on 1 CPU, N GPUs and several hosts (`config.distributed` calls
`jax.distributed.initialize`). The epoch-dependent IoU threshold is an argument, so nothing
recompiles between epochs. Training resumes from the latest checkpoint of the workdir; the chores
of the loop (logging, progress, evaluation and checkpointing at epoch ends) are periodic actions
(docs/design.md section 18).
"""

from __future__ import annotations

import collections
import contextlib
import dataclasses
import functools
import logging
import math
import os
import time
from typing import TYPE_CHECKING

import jax
import ml_collections
import numpy as np
import optax
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P
from tqdm import tqdm

from tea_jax import (checkpointing, compilation_cache, config_checks, evaluate, inference, losses,
                     optim, trainfree, workdir as workdir_files)
from tea_jax.data.prefetch import prefetch_to_device
from tea_jax.data.schema import records_dir
from tea_jax.errors import InputError, UserError
from tea_jax.mesh import initialize_distributed, is_primary, make_mesh
from tea_jax.model.config import ModelConfig
from tea_jax.model.tea import TEA

if TYPE_CHECKING:
  from tea_jax.data.input_pipeline import Records

log = logging.getLogger(__name__)


class TrainingDiverged(UserError, FloatingPointError):
  """The loss became NaN or inf."""


@dataclasses.dataclass(frozen=True)
class Schedule:
  """Step arithmetic of a run: EMB's ceil(n / batch) updates per epoch."""

  steps_per_epoch: int
  num_epochs: int
  max_steps: int = 0  # stop early (0: never); a later run resumes to the end

  @property
  def total_steps(self) -> int:
    return self.num_epochs * self.steps_per_epoch

  @property
  def stop_at(self) -> int:
    return min(self.total_steps, self.max_steps or self.total_steps)

  def epoch(self, step: int) -> int:
    """0-based epoch of the update that takes the state from `step` to `step + 1`."""
    return step // self.steps_per_epoch

  def epoch_ends(self) -> list[int]:
    """Steps after which an epoch is complete."""
    return list(range(self.steps_per_epoch, self.total_steps + 1, self.steps_per_epoch))

  def evaluation_steps(self, protocol: str, every_epochs: int = 1) -> list[int]:
    """Steps after which the protocol evaluates. "val": every `every_epochs`-th epoch end and the
    last step. "reference": EMB's loop, every steps_per_epoch // 2 global steps and every epoch
    end (global_step % (n // 2) == 0 or global_step % n == 0)."""
    if protocol == "reference":
      half = max(1, self.steps_per_epoch // 2)
      return [k for k in range(1, self.total_steps + 1)
              if k % half == 0 or k % self.steps_per_epoch == 0]
    ends = [k for k in self.epoch_ends() if (k // self.steps_per_epoch) % every_epochs == 0]
    return sorted(set(ends) | {self.total_steps})


def with_data_sizes(config: ml_collections.ConfigDict, records: Records
                    ) -> ml_collections.ConfigDict:
  """The config with the sizes the records imply (vocabulary, feature widths)."""
  records.check_fits(config.model)
  config = ml_collections.ConfigDict(config.to_dict())
  config.model.vocab_size = records.meta["vocab_size"]
  return config


def init_state(config, records: Records, tx, rng: jax.Array) -> tuple[dict, dict]:
  """(variables, train_state) of a fresh run: EMB init, the data's word vectors frozen."""
  variables = inference.init_variables(config, rng)
  vectors = records.word_vectors()
  expected = variables["frozen"]["word_embedding"]["word_vectors"].shape
  if vectors.shape != expected:
    raise InputError(f"word_vectors.npy has shape {vectors.shape}, expected {expected}")
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
    params = optax.apply_updates(variables["params"], updates)
    new_vars = {"params": params, "frozen": variables["frozen"]}
    # The optimiser has computed the global norm (one reduction over its flat vector).
    stats = dict(parts, loss=loss, grad_norm=optim.last_grad_norm(opt_state))
    return new_vars, {"opt_state": opt_state, "step": step + 1}, stats

  replicated = NamedSharding(mesh, P())
  data = NamedSharding(mesh, P("data"))
  return jax.jit(train_step, in_shardings=(replicated, replicated, data, replicated),
                 out_shardings=(replicated, replicated, replicated), donate_argnums=(0, 1))


def _prepare(config, workdir: str):
  """Opens the records, fits the config to them and writes config.json and vocab.json."""
  # TensorFlow (tf.data) is imported only where records are read, so that the jitted step and
  # bench/train_step.py run where it is not installed (the GPU image has no TensorFlow).
  from tea_jax.data.input_pipeline import Records  # pylint: disable=import-outside-toplevel
  config_checks.check_experiment(config)
  checkpointing.check_layout(workdir)
  records = Records(records_dir(config.data), config.data)
  config = with_data_sizes(config, records)
  os.makedirs(workdir, exist_ok=True)
  compilation_cache.enable(config.get("compilation_cache") or None, workdir=workdir)
  if is_primary():
    workdir_files.write_config(workdir, config)
    workdir_files.write_vocabulary(workdir, config.model.vocab_size, records.vocabulary(),
                                   records.records_dir)
  steps_per_epoch = math.ceil(records.size(config.data.train_split) / config.batch_size)
  schedule = Schedule(steps_per_epoch, config.num_epochs, config.get("max_steps", 0))
  return config, records, schedule


def _restore_or_init(mngr, config, records: Records, tx, mesh):
  """The latest checkpoint's state, else a fresh one; committed and replicated over the mesh so
  that the jitted step compiles exactly once."""
  variables, train_state = init_state(config, records, tx, jax.random.key(config.seed))
  restored = checkpointing.restore_latest_intact(mngr, variables, train_state)
  if restored is not None:
    variables, train_state = restored["variables"], restored["train_state"]
    log.info("resumed from step %d", int(train_state["step"]))
  return jax.device_put((variables, train_state), NamedSharding(mesh, P()))


class _Phases:
  """Times the loop's phases (input, eval, checkpoint): clu's report shows their shares in the
  log; the seconds spent in each so far go to TensorBoard as time/<phase>_s at each epoch end."""

  def __init__(self, report):
    self.report = report
    self.seconds = collections.defaultdict(float)

  @contextlib.contextmanager
  def timed(self, name: str):
    start = time.monotonic()
    with self.report.timed(name, wait_jax_async_dispatch=False):
      yield
    self.seconds[name] += time.monotonic() - start


class _TrainLog:
  """Averages the step statistics between log points; stops the run on a non-finite loss."""

  def __init__(self, writer, schedule: Schedule, learning_rate, thresholds, bar, mngr):
    self.writer, self.schedule, self.bar, self.mngr = writer, schedule, bar, mngr
    self.learning_rate, self.thresholds = learning_rate, thresholds
    self.pending = []

  def __call__(self, step: int, t: float = 0.0) -> None:
    del t
    host = jax.device_get(self.pending)
    self.pending = []
    mean = {k: float(np.mean([s[k] for s in host])) for k in host[0]}
    if not all(math.isfinite(v) for v in mean.values()):
      last = self.mngr.latest_step()
      kept = f"the last checkpoint (step {last}) is kept" if last is not None else \
          "no checkpoint was written"
      raise TrainingDiverged(f"loss became NaN/inf before step {step} ({mean}); {kept}")
    epoch = self.schedule.epoch(step - 1)
    mean.update(learning_rate=float(self.learning_rate(step - 1)),
                threshold=float(self.thresholds[epoch]), epoch=epoch)
    self.writer.write_scalars(step, {f"train/{k}": v for k, v in mean.items()})
    self.bar.set_postfix(loss=f"{mean['loss']:.3f}", epoch=epoch)


def evaluated_splits(config) -> list[str]:
  """The splits evaluated during training: the selection split ("val"), every reported split
  ("reference")."""
  if config.get("protocol", "val") == "reference":
    return list(config.data.eval_splits)
  return [config.data.selection_split]


def _checkpoint(*, step, t, variables, train_state, config, schedule, evaluations, mngr, records,
                eval_step, mesh, writer, phases, workdir):
  """At an epoch end or an evaluation step: evaluates when the protocol says so (each split's
  line goes to evaluations.jsonl first), then saves the checkpoint with those metrics (the manager
  keeps the latest ones and the best of each selection)."""
  del t
  metrics = None
  if step in evaluations:
    metrics = {}
    with phases.timed("eval"):
      for split in evaluated_splits(config):
        metrics[split], _ = evaluate.evaluate_split(eval_step, variables, records, split,
                                                    config.eval_batch_size, mesh, progress=False)
    epoch = step / schedule.steps_per_epoch
    for split, summary in metrics.items():
      writer.write_scalars(step, {f"{split}/{k}": v for k, v in summary.items() if k != "count"})
      log.info("epoch %.4g (step %d): %s %s=%.4f", epoch, step, split, config.selection_metric,
               summary[config.selection_metric])
    if is_primary():
      workdir_files.add_evaluations(workdir, [
          {"step": step, "epoch": round(epoch, 6), "split": split,
           "protocol": config.get("protocol", "val"), **summary}
          for split, summary in metrics.items()])
  with phases.timed("checkpoint"):
    checkpointing.save(mngr, step, variables, train_state, metrics)
  writer.write_scalars(step, {f"time/{k}_s": v for k, v in phases.seconds.items()})


def _train(config, schedule: Schedule, mngr, records: Records, mesh, tx, writer, progress,
           workdir):
  """The training loop from the latest checkpoint to schedule.stop_at."""
  from clu import periodic_actions  # pylint: disable=import-outside-toplevel
  variables, train_state = _restore_or_init(mngr, config, records, tx, mesh)
  step = int(train_state["step"])
  if is_primary():  # evaluations after the checkpoint resumed from are made again
    workdir_files.keep_evaluations_until(workdir, step)
  train_step = make_train_step(config, tx, mesh)
  eval_step = evaluate.make_eval_step(config, mesh)
  thresholds = losses.numpy_threshold_schedule(config.num_epochs)
  bar = tqdm(total=schedule.stop_at, initial=step, desc="train", unit="step", dynamic_ncols=True,
             disable=not progress)
  learning_rate = optim.learning_rate_schedule(config, schedule.total_steps)
  evaluations = set(schedule.evaluation_steps(config.get("protocol", "val"),
                                              config.eval_every_epochs))
  ends = set(schedule.epoch_ends()) | {schedule.stop_at} | evaluations
  report = periodic_actions.ReportProgress(num_train_steps=schedule.stop_at, writer=writer,
                                           every_steps=config.log_every_steps, every_secs=None)
  phases = _Phases(report)
  train_log = _TrainLog(writer, schedule, learning_rate, thresholds, bar, mngr)
  logging_action = periodic_actions.PeriodicCallback(
      every_steps=config.log_every_steps, on_steps=ends, callback_fn=train_log)
  epoch_action = periodic_actions.PeriodicCallback(on_steps=ends, callback_fn=functools.partial(
      _checkpoint, config=config, schedule=schedule, evaluations=evaluations, mngr=mngr,
      records=records, eval_step=eval_step, mesh=mesh, writer=writer, phases=phases,
      workdir=workdir))
  batches = prefetch_to_device(
      records.train_batches(config.data.train_split, config.batch_size, config.seed,
                            start_step=step, process_index=jax.process_index(),
                            process_count=jax.process_count()), mesh)
  try:
    while step < schedule.stop_at:
      with phases.timed("input"):
        batch = next(batches)
      variables, train_state, stats = train_step(
          variables, train_state, batch, np.float32(thresholds[schedule.epoch(step)]))
      train_log.pending.append(stats)
      step += 1
      bar.update(1)
      report(step)
      logging_action(step)
      epoch_action(step, variables=variables, train_state=train_state)
  finally:
    batches.close()  # stops reading, also on an error
    bar.close()
  return step, eval_step


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str,
                       progress: bool = True) -> dict:
  """Trains (resuming from workdir), keeps the latest and the best checkpoints, then evaluates the
  best one on every configured split (metrics.json, predictions_<split>.jsonl). One run per
  workdir: a second one is refused while the first holds the workdir's lock."""
  if trainfree.is_trainfree(config):
    log.info("the train-free retriever has no parameters to train: evaluating it")
    return {"step": 0, "metrics": evaluate.evaluate_trainfree(config, workdir, progress)["splits"]}
  initialize_distributed(config)  # first: process 0 alone takes the lock
  with workdir_files.locked(workdir, "training") if is_primary() else contextlib.nullcontext():
    return _train_and_evaluate(config, workdir, progress)


def _train_and_evaluate(config, workdir: str, progress: bool) -> dict:
  from clu import metric_writers  # pylint: disable=import-outside-toplevel
  config, records, schedule = _prepare(config, workdir)
  mesh = make_mesh()
  tx = optim.make_optimizer(config, schedule.total_steps)
  writer = metric_writers.create_default_writer(os.path.join(workdir, "tensorboard"),
                                                just_logging=not is_primary(), asynchronous=False)
  with checkpointing.manager(workdir, keep_best=checkpointing.selections(config)) as mngr:
    step, eval_step = _train(config, schedule, mngr, records, mesh, tx, writer, progress, workdir)
  result = {"step": step}
  if step >= schedule.total_steps:
    # Derived from the checkpoints on disk alone, so a rerun after a kill writes the same files.
    reported = evaluate.report(config, workdir, records, mesh, progress, eval_step)
    result.update(metrics=reported["splits"], best=reported.get("step"))
  writer.close()
  return result
