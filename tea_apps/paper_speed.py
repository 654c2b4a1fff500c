"""Projected time of the runs a dry run lists: training steps x the train step's time, evaluations x
the eval step's time, with where each number comes from.

The step times are measured here, on this machine, with a few calls of the runs' own jitted steps
(tea_jax.train.make_train_step, tea_jax.evaluate.make_eval_step) on a batch of the runs' padded
shapes, after compiling; or given with `--step-ms` (then evaluations are not counted). Pair counts
come from the records, else the annotation files, else tea_jax's counts of the released files
(tea_apps/paper_results.json, "pairs").
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import time

import jax
import ml_collections
import numpy as np
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from data_prep import build_records
from tea_apps.paper_runs import RunSpec, published
from tea_jax import checkpointing, evaluate, inference, optim, train
from tea_jax.data.input_pipeline import load_meta, padded_lengths, round_up
from tea_jax.data.prefetch import to_device
from tea_jax.data.schema import records_dir
from tea_jax.errors import InputError
from tea_jax.mesh import make_mesh

# Query length assumed when no records say it (the longest query, rounded up to 8).
ASSUMED_WORDS = 32
# Vocabulary size assumed when no records say it (it changes only the embedding's gather).
ASSUMED_VOCAB = 10000


@dataclasses.dataclass
class Shapes:
  """Padded batch shapes of a run and where they come from."""

  length: int
  words: int
  vocab: int
  source: str


def shapes(config: ml_collections.ConfigDict) -> Shapes:
  """Padded lengths of the run's batches: the records', else the config's maxima."""
  try:
    meta = load_meta(records_dir(config.data))
    length, words = padded_lengths(config.data, meta)
    return Shapes(length, words, meta["vocab_size"], "the records")
  except (FileNotFoundError, InputError):
    length = config.data.pad_snippets or round_up(config.data.max_snippets)
    words = config.data.pad_words or ASSUMED_WORDS
    return Shapes(length, words, ASSUMED_VOCAB,
                  f"no records: L = data.max_snippets, W = {words} and a vocabulary of "
                  f"{ASSUMED_VOCAB} assumed")


def speed_key(config: ml_collections.ConfigDict, s: Shapes) -> str:
  """Runs with the same key run at the same speed (alpha, seed and data do not matter)."""
  model = {k: v for k, v in config.model.to_dict().items() if k != "alpha"}
  return json.dumps([model, config.batch_size, config.eval_batch_size, s.length, s.words,
                     s.vocab], sort_keys=True)


def step_batch(config, batch_size: int, s: Shapes) -> dict:
  """A batch of the run's padded shapes (values do not change the step's time)."""
  batch = inference.example_batch(config, batch_size, s.length, s.words)
  batch.update(start_label=np.full(batch_size, s.length // 4, np.int32),
               end_label=np.full(batch_size, s.length // 2, np.int32),
               duration=np.full(batch_size, 30.0, np.float32),
               valid=np.ones(batch_size, np.float32))
  return batch


def _time_calls(call, steps: int) -> tuple[float, float]:
  """(seconds of the first call, which compiles; mean ms of the next `steps`, queued back to
  back as the training loop queues them)."""
  start = time.perf_counter()
  jax.block_until_ready(call())
  first = time.perf_counter() - start
  start = time.perf_counter()
  for _ in range(steps):
    out = call()
  jax.block_until_ready(out)
  return first, 1e3 * (time.perf_counter() - start) / steps


def measure(config: ml_collections.ConfigDict, s: Shapes, steps: int, total_steps: int) -> dict:
  """ms per train step and per eval step of the run's jitted steps on this machine (the
  optimizer's schedule over the run's `total_steps`: the very program the run compiles, which the
  persistent compilation cache may already hold)."""
  config = ml_collections.ConfigDict(config.to_dict())
  config.model.vocab_size = s.vocab
  mesh = make_mesh()
  tx = optim.make_optimizer(config, total_steps)
  variables = inference.init_variables(config, jax.random.key(0))
  state = {"variables": variables,
           "train": {"opt_state": tx.init(variables["params"]), "step": np.zeros((), np.int32)}}
  state = jax.device_put(state, NamedSharding(mesh, P()))
  train_step = train.make_train_step(config, tx, mesh)
  batch = to_device(step_batch(config, config.batch_size, s), mesh)

  def one_train_step():
    """One step on the state the previous one left (the state is donated)."""
    state["variables"], state["train"], stats = train_step(
        state["variables"], state["train"], batch, np.float32(0.5))
    return stats["loss"]

  train_compile, train_ms = _time_calls(one_train_step, steps)
  eval_step = evaluate.make_eval_step(config, mesh)
  eval_batch = to_device(step_batch(config, config.eval_batch_size, s), mesh, whole=True)
  eval_compile, eval_ms = _time_calls(lambda: eval_step(state["variables"], eval_batch), steps)
  return {"train_ms": train_ms, "eval_ms": eval_ms,
          "compile_s": train_compile + eval_compile}


def device_text() -> str:
  """This machine's JAX devices in words."""
  devices = jax.devices()
  return f"{len(devices)} x {devices[0].device_kind} ({jax.default_backend()})"


def pair_counts(run: RunSpec, config: ml_collections.ConfigDict) -> tuple[dict | None, str]:
  """({split: pairs}, source) of the run's data."""
  try:
    meta = load_meta(records_dir(config.data))
    return {s: m["pairs"] for s, m in meta["splits"].items()}, "records"
  except (FileNotFoundError, InputError):
    pass
  try:
    annotations, _ = build_records.read_splits(config.data, list(config.data.splits))
    return {s: len(a.pairs) for s, a in annotations.items()}, "annotation files"
  except (FileNotFoundError, InputError, OSError):
    pass
  counts = published()["pairs"].get(run.benchmark)
  if counts:
    return counts, "paper_results.json pairs (no records or annotation files here)"
  return None, "unknown: no records, annotation files or known counts"


def steps_done(workdir: str) -> int:
  """The latest checkpoint's step (0 for a new run)."""
  if not os.path.isdir(workdir):
    return 0
  with checkpointing.manager(workdir, read_only=True) as mngr:
    return mngr.latest_step() or 0


def projection(config: ml_collections.ConfigDict, counts: dict, done: int) -> dict:
  """Train steps and eval steps still to run (EMB's ceil(n / batch) updates per epoch; the
  protocol's evaluations, then the final evaluation of every reported split)."""
  steps_per_epoch = math.ceil(counts[config.data.train_split] / config.batch_size)
  schedule = train.Schedule(steps_per_epoch, config.num_epochs)
  evaluations = [k for k in schedule.evaluation_steps(config.get("protocol", "val"),
                                                      config.eval_every_epochs) if k > done]
  per_evaluation = sum(math.ceil(counts[s] / config.eval_batch_size)
                       for s in train.evaluated_splits(config))
  final = sum(math.ceil(counts[s] / config.eval_batch_size) for s in config.data.eval_splits)
  return {"train_steps": max(0, schedule.total_steps - done),
          "eval_steps": len(evaluations) * per_evaluation + final,
          "total_steps": schedule.total_steps}


def duration_text(seconds: float) -> str:
  """'8 s', '42 min' or '5.80 h'."""
  if seconds < 60:
    return f"{seconds:.0f} s"
  return f"{seconds / 60:.0f} min" if seconds < 3600 else f"{seconds / 3600:.2f} h"
