"""Full training step (forward, losses, backward, clipping, AdamW) at the paper's shapes.

    python bench/train_step.py [--batch 16 --length 128 --words 12 --variants emb,tea]
                               [--lstm scan,cudnn]

Prints ms per step and samples/s for each variant, and the projected wall time of a 100-epoch
Charades-CD run (11,071 training pairs: 692 steps per epoch at batch 16), on whatever backend JAX
finds (CPU here; the GPU when there is one). Uses the jitted step of tea_jax.train on a mesh over
all local devices. `--lstm` lists the BiLSTM implementations to time (default: "scan", and also
"cudnn" when JAX runs on a GPU).
"""

import argparse
import math
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax  # noqa: E402
import numpy as np  # noqa: E402
from jax.sharding import NamedSharding, PartitionSpec  # noqa: E402

from bench.model_step import VARIANTS, make_batch, timeit  # noqa: E402
from configs import common  # noqa: E402
from tea_jax import inference, optim, train  # noqa: E402
from tea_jax.data.prefetch import to_device  # noqa: E402
from tea_jax.mesh import make_mesh  # noqa: E402

CHARADES_CD_TRAIN = 11071


def main():
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--batch", type=int, default=16)
  parser.add_argument("--length", type=int, default=128)
  parser.add_argument("--words", type=int, default=12)
  parser.add_argument("--vocab", type=int, default=1200)
  parser.add_argument("--repeats", type=int, default=10)
  parser.add_argument("--epochs", type=int, default=100)
  parser.add_argument("--variants", default="emb,tea")
  parser.add_argument("--lstm", default=None,
                      help="comma-separated model.lstm values (default: scan; scan,cudnn on a GPU)")
  args = parser.parse_args()
  lstms = (args.lstm or ("scan,cudnn" if jax.default_backend() == "gpu" else "scan")).split(",")
  mesh = make_mesh()
  steps_per_epoch = math.ceil(CHARADES_CD_TRAIN / args.batch)
  print(f"backend={jax.default_backend()} devices={jax.device_count()} B={args.batch} "
        f"L={args.length} W={args.words}")
  print(f"| variant | ms/step | samples/s | compile s | projected {args.epochs}-epoch Charades-CD "
        f"({steps_per_epoch * args.epochs} steps) | loss of step 1 |")
  print("| --- | --- | --- | --- | --- | --- |")
  for name, lstm in [(n, lstm) for n in args.variants.split(",") for lstm in lstms]:
    label = name if lstm == "scan" else f"{name} ({lstm} LSTM)"
    try:
      row = time_variant(args, mesh, name, lstm, steps_per_epoch)
    except Exception as e:  # pylint: disable=broad-except
      # One failing variant (e.g. cuDNN on an unexpected JAX build) must not hide the others.
      print(f"| {label} | failed: {type(e).__name__}: {str(e).splitlines()[0][:200]} | | | | |")
      continue
    seconds, compile_s, first_loss = row
    hours = seconds * steps_per_epoch * args.epochs / 3600
    print(f"| {label} | {seconds * 1e3:.1f} | {args.batch / seconds:.1f} | {compile_s:.1f} | "
          f"{hours:.2f} h | {first_loss:.6f} |")


def time_variant(args, mesh, name, lstm, steps_per_epoch):
  """(median s/step, compile s, loss of the first step) of one variant; same seed and batch for all
  variants, so the scan and cuDNN rows' first losses must agree (up to TF32 rounding on a GPU)."""
  config = common.base_config()
  config.model.update(VARIANTS[name], vocab_size=args.vocab, lstm=lstm)
  config.batch_size = args.batch
  tx = optim.make_optimizer(config, steps_per_epoch * args.epochs)
  variables = inference.init_params(config, jax.random.key(0))
  train_state = {"opt_state": tx.init(variables["params"]), "step": np.zeros((), np.int32)}
  state = jax.device_put((variables, train_state), NamedSharding(mesh, PartitionSpec()))
  step = train.make_train_step(config, tx, mesh)
  batch = make_batch(np.random.default_rng(0), config.model, args.batch, args.length, args.words)
  batch.update(duration=np.full(args.batch, 30.0, np.float32),
               valid=np.ones(args.batch, np.float32))
  device_batch = to_device(batch, mesh)
  holder = {"state": state}

  def run():
    variables, train_state = holder["state"]
    variables, train_state, stats = step(variables, train_state, device_batch, np.float32(0.7))
    holder["state"] = (variables, train_state)
    return stats["loss"]

  t0 = time.perf_counter()
  first_loss = float(run())  # compiles
  compile_s = time.perf_counter() - t0
  seconds, _ = timeit(run, args.repeats)
  return seconds, compile_s, first_loss


if __name__ == "__main__":
  main()
