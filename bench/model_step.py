"""Forward and forward+backward time of the TEA/EMB model at the paper's shapes.

    python bench/model_step.py [--batch 16 --length 128 --words 12 --variants emb,tea]
                               [--lstm auto]

Prints a table of ms per call and samples/s for each model variant (EMB = no VN, no PQ; TEA = concat
merge + paragraph branch) on whatever JAX backend is present (CPU here, the GPU when there is one).
The backward pass differentiates a stand-in loss (span log-likelihood + mean highlight + mean
proposal score) so that every output is on the gradient path; the full training step with the
paper's losses and optimiser is measured by bench/train_step.py. `--lstm` picks the BiLSTM
implementation (model.lstm; "auto" is the Pallas kernels on a GPU and the scan elsewhere).
"""

import argparse
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

from tea_jax import inference  # noqa: E402
from tea_jax.model.config import ModelConfig, model_defaults  # noqa: E402
from tea_jax.model.tea import TEA  # noqa: E402

VARIANTS = {"emb": dict(merge="none", paragraph_branch=False),
            "tea": dict(merge="concat", paragraph_branch=True)}


def make_batch(rng, config, batch, length, words):
  """Random features; each sample a different valid length, like real padded batches."""
  lengths = rng.integers(length // 2, length + 1, batch)
  lengths[0] = length
  video_mask = (np.arange(length)[None] < lengths[:, None]).astype(np.float32)
  wlen = rng.integers(3, words + 1, batch)
  wlen[0] = words
  query_mask = (np.arange(words)[None] < wlen[:, None]).astype(np.float32)
  return {"video": rng.normal(size=(batch, length, config.video_dim)).astype(np.float32)
                   * video_mask[..., None],
          "video_mask": video_mask,
          "word_ids": (rng.integers(2, config.vocab_size, (batch, words)) * query_mask
                       ).astype(np.int32),
          "query_mask": query_mask,
          "narrative": rng.normal(size=(batch, length, config.narrative_dim)).astype(np.float32)
                       * video_mask[..., None],
          "start_label": (rng.random(batch) * lengths * 0.5).astype(np.int32),
          "end_label": (lengths * 0.5 + rng.random(batch) * lengths * 0.49).astype(np.int32)}


def timeit(fn, repeats):
  """Median wall time of fn() over `repeats` calls after one warm-up (compile) call."""
  t0 = time.perf_counter()
  jax.block_until_ready(fn())
  compile_s = time.perf_counter() - t0
  times = []
  for _ in range(repeats):
    t0 = time.perf_counter()
    jax.block_until_ready(fn())
    times.append(time.perf_counter() - t0)
  return float(np.median(times)), compile_s


def main():
  parser = argparse.ArgumentParser(description=" ".join(__doc__.split("\n\n")[0].split()))
  parser.add_argument("--batch", type=int, default=16)
  parser.add_argument("--length", type=int, default=128)
  parser.add_argument("--words", type=int, default=12)
  parser.add_argument("--hidden", type=int, default=128)
  parser.add_argument("--vocab", type=int, default=1200)
  parser.add_argument("--repeats", type=int, default=10)
  parser.add_argument("--variants", default="emb,tea")
  parser.add_argument("--lstm", default="auto", help="model.lstm (BiLSTM implementation)")
  args = parser.parse_args()

  print(f"backend={jax.default_backend()} devices={jax.devices()} "
        f"B={args.batch} L={args.length} W={args.words} D={args.hidden} lstm={args.lstm}")
  print(f"{'variant':8} {'pass':18} {'ms/step':>9} {'samples/s':>10} {'compile s':>10}")
  rng = np.random.default_rng(0)
  for name in args.variants.split(","):
    config = model_defaults()
    config.update(VARIANTS[name], hidden=args.hidden, vocab_size=args.vocab, lstm=args.lstm)
    model = TEA(ModelConfig.from_config(config))
    variables = inference.init_variables(config, jax.random.key(0))
    batch = make_batch(rng, config, args.batch, args.length, args.words)
    inputs = {k: jnp.asarray(v) for k, v in batch.items()}

    forward = jax.jit(lambda v, b: model.apply(v, b, train=False))

    def loss_fn(params, frozen, b, key):
      out = model.apply({"params": params, "frozen": frozen}, b, train=True,
                        rngs={"dropout": key})
      idx = jnp.arange(b["video"].shape[0])
      span = -(jnp.log(out["start_prob"][idx, b["start_label"]] + 1e-12)
               + jnp.log(out["end_prob"][idx, b["end_label"]] + 1e-12)).mean()
      return span + out["highlight"].mean() + out["proposal_scores"].mean()

    grad_fn = jax.jit(jax.value_and_grad(loss_fn))
    key = jax.random.key(1)
    rows = [("forward (eval)", lambda: forward(variables, inputs)),
            ("forward+backward", lambda: grad_fn(variables["params"], variables["frozen"],
                                                 inputs, key))]
    for label, fn in rows:
      seconds, compile_s = timeit(fn, args.repeats)
      print(f"{name:8} {label:18} {seconds * 1e3:9.1f} {args.batch / seconds:10.1f} "
            f"{compile_s:10.1f}")


if __name__ == "__main__":
  main()
