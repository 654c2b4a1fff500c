"""Narration throughput (frames/s) over batch sizes.

    python bench/narrate.py [--model MODEL_DIR | --architecture tiny|llava-1.5-7b|llava-1.5-13b]
                            [--batch-sizes 1,4,16] [--new-tokens 60] [--frames 32]

Without --model, a randomly initialised model of the given architecture is built from its config
(no weights needed; the 7b/13b architectures need a GPU's memory). Every generate() call produces
exactly --new-tokens tokens (min = max), so the figure is the cost of a fixed-length caption. Prints
frames/s per batch size and the speed-up of batching over one frame at a time.
"""

import argparse
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import numpy as np  # noqa: E402
import torch  # noqa: E402
from PIL import Image  # noqa: E402

from data_prep import random_mllm  # noqa: E402
from data_prep.narrators import LlavaNarrator  # noqa: E402


def main():
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--model", help="local LLaVA model directory (default: random weights)")
  parser.add_argument("--architecture", default="tiny", choices=sorted(random_mllm.ARCHITECTURES))
  parser.add_argument("--batch-sizes", default="1,4,16")
  parser.add_argument("--new-tokens", type=int, default=60)
  parser.add_argument("--frames", type=int, default=32, help="frames captioned per batch size")
  parser.add_argument("--device", default="auto")
  parser.add_argument("--dtype", default="auto")
  args = parser.parse_args()

  if args.model:
    narrator = LlavaNarrator(args.model, args.device, args.dtype, args.new_tokens)
  else:
    with torch.device("cuda" if torch.cuda.is_available() and args.device != "cpu" else "cpu"):
      components = random_mllm.build_llava(args.architecture, vocab_size=32064)
    narrator = LlavaNarrator(None, args.device, args.dtype, args.new_tokens,
                             components=components)
  narrator.model.generation_config.min_new_tokens = args.new_tokens
  rng = np.random.default_rng(0)
  images = [Image.fromarray(rng.integers(0, 255, (336, 448, 3), dtype=np.uint8))
            for _ in range(args.frames)]
  print(f"model={args.model or args.architecture} device={narrator.device} dtype={narrator.dtype} "
        f"new_tokens={args.new_tokens} torch={torch.__version__}")
  print("| batch | frames/s | speed-up vs batch 1 |")
  print("| --- | --- | --- |")
  base = None
  for batch in [int(b) for b in args.batch_sizes.split(",")]:
    narrator.caption(images[:batch])  # warm-up
    if narrator.device.type == "cuda":
      torch.cuda.synchronize()
    t0 = time.perf_counter()
    for start in range(0, args.frames, batch):
      narrator.caption(images[start:start + batch])
    if narrator.device.type == "cuda":
      torch.cuda.synchronize()
    rate = args.frames / (time.perf_counter() - t0)
    base = base or rate
    print(f"| {batch} | {rate:.2f} | {rate / base:.2f}x |")


if __name__ == "__main__":
  main()
