"""Record building and reading speed at the paper's shapes.

    python bench/input_pipeline.py [--videos 300 --seconds 100 200 --batch 16]

Writes a synthetic benchmark with I3D-sized features (1024-d, videos of 100-200 s reduced to 128
snippets) and 300-d word vectors, then prints: the build time per 1k pairs, and the batches/s the
training reader delivers (B = 16, fixed L and W) and the records' size on disk, next to the
batches/s a training step consumes (pass --step-ms from bench/train_step.py; the target is a
reader at least 10x faster).
"""

import argparse
import os
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from configs import demo  # noqa: E402
from data_prep import synthetic  # noqa: E402
from data_prep.build_records import build_records  # noqa: E402
from tea_jax.data.input_pipeline import Records  # noqa: E402
from tea_jax.data.schema import records_dir  # noqa: E402


def main():
  parser = argparse.ArgumentParser(description=" ".join(__doc__.split("\n\n")[0].split()))
  parser.add_argument("--videos", type=int, default=300)
  parser.add_argument("--seconds", type=int, nargs=2, default=(100, 200))
  parser.add_argument("--batch", type=int, default=16)
  parser.add_argument("--batches", type=int, default=300)
  parser.add_argument("--step-ms", type=float, default=340.0,
                      help="train step time to compare with (bench/train_step.py)")
  args = parser.parse_args()
  root = tempfile.mkdtemp(prefix="tea_bench_")
  t0 = time.perf_counter()
  counts = synthetic.generate(root, videos=args.videos, video_dim=1024, word_dim=300,
                              seconds=tuple(args.seconds))
  gen_s = time.perf_counter() - t0
  config = demo.get_config()
  config.unlock()
  config.data.root = root
  config.model.update(video_dim=1024, word_dim=300, narrative_dim=300)
  t0 = time.perf_counter()
  meta = build_records(config, progress=False)
  build_s = time.perf_counter() - t0
  pairs = sum(m["pairs"] for m in meta["splits"].values())
  folder = records_dir(config.data)
  record_bytes = sum(os.path.getsize(os.path.join(folder, name))
                     for name in os.listdir(folder) if name.endswith(".tfrecord"))
  records = Records(folder, config.data)
  stream = records.train_batches("train", args.batch, seed=0)
  next(stream)  # start-up
  t0 = time.perf_counter()
  for _ in range(args.batches):
    next(stream)
  read_s = time.perf_counter() - t0
  reader = args.batches / read_s
  consumer = 1000.0 / args.step_ms
  print(f"synthetic data: {args.videos} videos, {pairs} pairs ({counts}), written in {gen_s:.1f}s")
  print(f"records: L={records.length} W={records.words}, video 1024-d, narrative 300-d")
  print(f"| build records | {build_s:.1f} s for {pairs} pairs = "
        f"{1000 * build_s / pairs:.1f} s per 1k pairs |")
  print(f"| records on disk | {record_bytes / 2**20:.0f} MiB = "
        f"{record_bytes / pairs / 1024:.0f} KiB "
        f"per pair |")
  print(f"| reader (train, B={args.batch}) | {reader:.1f} batches/s |")
  print(f"| train step consumes | {consumer:.2f} batches/s (step {args.step_ms:.0f} ms) |")
  print(f"| reader / consumer | {reader / consumer:.1f}x (target >= 10x) |")


if __name__ == "__main__":
  main()
