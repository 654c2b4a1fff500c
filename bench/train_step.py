"""Full training step (forward, losses, backward, clipping, AdamW) at the paper's shapes.

    python bench/train_step.py [--batch 16 --length 128 --words 12 --variants emb,tea]
                               [--lstm scan,pallas,cudnn] [--repeats 10] [--cache-dir DIR]

For each variant (model switches x BiLSTM implementation) it prints ms per step synced (each step
waited for, as bench/model_step.py) and pipelined (steps queued back to back, as the training loop
runs them), the compile time cold (empty persistent compilation cache) and cached (JAX's in-memory
caches cleared, as in a new process: tracing plus loading from the cache), and the projected wall
time of a 100-epoch Charades-CD run (11,071 training pairs: 692 steps per epoch at batch 16) at the
pipelined rate, on whatever backend JAX finds. It uses the jitted step of tea_jax.train on a mesh
over all local devices, the same seed and batch for every variant (so the rows' first losses agree
up to the implementations' rounding). `--lstm` default: "scan" on a CPU; "auto,scan,cudnn" on a
GPU ("auto" runs the Pallas kernels there). The compilation cache is a fresh temporary folder
unless `--cache-dir` names one.
"""

import argparse
import math
import os
import shutil
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax  # noqa: E402
import numpy as np  # noqa: E402
from jax.sharding import NamedSharding, PartitionSpec  # noqa: E402

from bench.model_step import VARIANTS, make_batch  # noqa: E402
from configs import common  # noqa: E402
from tea_jax import compilation_cache, inference, optim, train  # noqa: E402
from tea_jax.data.prefetch import to_device  # noqa: E402
from tea_jax.mesh import make_mesh  # noqa: E402

CHARADES_CD_TRAIN = 11071


def parse_args(argv=None):
  parser = argparse.ArgumentParser(description=" ".join(__doc__.split("\n\n")[0].split()))
  parser.add_argument("--batch", type=int, default=16)
  parser.add_argument("--length", type=int, default=128)
  parser.add_argument("--words", type=int, default=12)
  parser.add_argument("--vocab", type=int, default=1200)
  parser.add_argument("--repeats", type=int, default=10)
  parser.add_argument("--epochs", type=int, default=100)
  parser.add_argument("--variants", default="emb,tea")
  parser.add_argument("--lstm", default=None,
                      help="comma-separated model.lstm values (default: scan on a CPU, "
                           "auto,scan,cudnn on a GPU)")
  parser.add_argument("--cache-dir", default=None,
                      help="persistent compilation cache (default: a fresh temporary folder)")
  return parser.parse_args(argv)


def main():
  args = parse_args()
  on_gpu = jax.default_backend() == "gpu"
  lstms = (args.lstm or ("auto,scan,cudnn" if on_gpu else "scan")).split(",")
  cache_dir = args.cache_dir or tempfile.mkdtemp(prefix="tea_jax_bench_cache_")
  compilation_cache.enable(cache_dir)
  mesh = make_mesh()
  steps_per_epoch = math.ceil(CHARADES_CD_TRAIN / args.batch)
  total = steps_per_epoch * args.epochs
  print(f"backend={jax.default_backend()} devices={jax.device_count()} "
        f"({jax.devices()[0].device_kind}) jax {jax.__version__} B={args.batch} L={args.length} "
        f"W={args.words}; compilation cache {cache_dir}"
        + ("" if args.cache_dir is None else " (given: 'cold' may already be cached)"))
  print(f"| variant | ms/step synced | min-max | ms/step pipelined | samples/s | compile cold s "
        f"(trace + XLA) | compile cached s | projected {args.epochs}-epoch Charades-CD "
        f"({total} steps) | loss of step 1 |")
  print("| --- | --- | --- | --- | --- | --- | --- | --- | --- |")
  try:
    for name, lstm in [(n, lstm) for n in args.variants.split(",") for lstm in lstms]:
      label = name if lstm == "scan" else f"{name} ({lstm} LSTM)"
      try:
        row = time_variant(args, mesh, name, lstm, total)
      except Exception as e:  # pylint: disable=broad-except
        # One failing variant (e.g. cuDNN on an unexpected JAX build) must not hide the others.
        print(f"| {label} | failed: {type(e).__name__}: {str(e).splitlines()[0][:200]} "
              f"| | | | | | | |")
        continue
      print(f"| {label} | {row['synced_ms']:.1f} | {row['synced_min']:.1f}-{row['synced_max']:.1f}"
            f" | {row['pipelined_ms']:.1f} | {args.batch / row['pipelined_ms'] * 1e3:.1f} | "
            f"{row['cold_s']:.1f} ({row['trace_s']:.1f} + {row['cold_s'] - row['trace_s']:.1f}) | "
            f"{row['cached_s']:.1f} | {format_duration(row['pipelined_ms'] / 1e3 * total)} | "
            f"{row['first_loss']:.6f} |", flush=True)
  finally:
    if args.cache_dir is None:
      shutil.rmtree(cache_dir, ignore_errors=True)


def format_duration(seconds: float) -> str:
  """'42 min' or '5.80 h'."""
  return f"{seconds / 60:.0f} min" if seconds < 3600 else f"{seconds / 3600:.2f} h"


def build_variant(args, mesh, name, lstm, total_steps):
  """(jitted train step, its arguments) of one variant: the config, state and batch of the paper's
  shapes, as tea_jax.train builds them."""
  config = common.base_config()
  config.model.update(VARIANTS[name], vocab_size=args.vocab, lstm=lstm)
  config.batch_size = args.batch
  tx = optim.make_optimizer(config, total_steps)
  variables = inference.init_variables(config, jax.random.key(0))
  train_state = {"opt_state": tx.init(variables["params"]), "step": np.zeros((), np.int32)}
  state = jax.device_put((variables, train_state), NamedSharding(mesh, PartitionSpec()))
  step = train.make_train_step(config, tx, mesh)
  batch = make_batch(np.random.default_rng(0), config.model, args.batch, args.length, args.words)
  batch.update(duration=np.full(args.batch, 30.0, np.float32),
               valid=np.ones(args.batch, np.float32))
  return step, (*state, to_device(batch, mesh), np.float32(0.7))


def compile_step(step, arguments):
  """(compiled step, trace + lower s, total s)."""
  t0 = time.perf_counter()
  lowered = step.lower(*arguments)
  t1 = time.perf_counter()
  compiled = lowered.compile()
  return compiled, t1 - t0, time.perf_counter() - t0


def make_runner(compiled, arguments):
  """run() -> loss: one train step on the state the previous call left (the state is donated)."""
  holder = {"state": arguments[:2]}

  def run():
    variables, train_state, stats = compiled(*holder["state"], *arguments[2:])
    holder["state"] = (variables, train_state)
    return stats["loss"]

  return run


def measure(run, repeats):
  """(loss of the first step, synced s per step (list), pipelined s per step)."""
  first_loss = float(run())
  jax.block_until_ready(run())
  synced = []
  for _ in range(repeats):
    t0 = time.perf_counter()
    jax.block_until_ready(run())
    synced.append(time.perf_counter() - t0)
  t0 = time.perf_counter()
  for _ in range(repeats):
    loss = run()
  jax.block_until_ready(loss)
  return first_loss, synced, (time.perf_counter() - t0) / repeats


def time_variant(args, mesh, name, lstm, total_steps):
  """Timings of one variant (see the module docstring)."""
  step, arguments = build_variant(args, mesh, name, lstm, total_steps)
  _, trace_s, cold_s = compile_step(step, arguments)
  jax.clear_caches()  # as a new process would start: only the persistent cache is left
  compiled, _, cached_s = compile_step(step, arguments)
  first_loss, synced, pipelined = measure(make_runner(compiled, arguments), args.repeats)
  return dict(synced_ms=1e3 * float(np.median(synced)), synced_min=1e3 * min(synced),
              synced_max=1e3 * max(synced), pipelined_ms=1e3 * pipelined, trace_s=trace_s,
              cold_s=cold_s, cached_s=cached_s, first_loss=first_loss)


if __name__ == "__main__":
  main()
