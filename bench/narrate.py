"""Narration throughput (frames/s) over batch sizes.

    python bench/narrate.py [--model MODEL_DIR | --architecture tiny|llava-1.5-7b|llava-1.5-13b]
                            [--batch-sizes 1,4,16] [--new-tokens 60] [--frames 32]
                            [--end-to-end --videos 8 --seconds 16 --decode-workers 1,2]

Without --model, a randomly initialised model of the given architecture is built from its config
(no weights needed; the 7b/13b architectures need a GPU's memory). Every generate() call produces
exactly --new-tokens tokens (min = max), so the figure is the cost of a fixed-length caption. Prints
frames/s per batch size and the speed-up of batching over one frame at a time.

With --end-to-end it also times the whole `data_prep.narrate` pipeline (PyAV decoding threads,
image preprocessing one batch ahead, generation, fsync'ed output lines) on generated 640x480 30 fps
videos: when decoding and preprocessing are hidden behind generation, its frames/s approach the
model-only figure of the same batch size.
"""

import argparse
import os
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import numpy as np  # noqa: E402
import torch  # noqa: E402
from PIL import Image  # noqa: E402

from data_prep.testing import random_mllm  # noqa: E402
from data_prep.narration.narrators import LlavaNarrator  # noqa: E402


def main():
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--model", help="local LLaVA model directory (default: random weights)")
  parser.add_argument("--architecture", default="tiny", choices=sorted(random_mllm.ARCHITECTURES))
  parser.add_argument("--batch-sizes", default="1,4,16")
  parser.add_argument("--new-tokens", type=int, default=60)
  parser.add_argument("--frames", type=int, default=32, help="frames captioned per batch size")
  parser.add_argument("--device", default="auto")
  parser.add_argument("--dtype", default="auto")
  parser.add_argument("--end-to-end", action="store_true",
                      help="also time data_prep.narrate on generated videos")
  parser.add_argument("--videos", type=int, default=8, help="generated videos (--end-to-end)")
  parser.add_argument("--seconds", type=int, default=16, help="length of each generated video")
  parser.add_argument("--decode-workers", default="1,2")
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
  if args.end_to_end:
    end_to_end(narrator, args)


# PyAV (av) is imported only by the end-to-end mode: the model-only figures need no video library.


def write_video(path: str, seconds: int, rng) -> None:
  """A 640x480, 30 fps H.264 video (MPEG-4 part 2 if this FFmpeg has no libx264) of moving noise."""
  import av  # pylint: disable=import-outside-toplevel
  codec = "libx264" if "libx264" in av.codecs_available else "mpeg4"
  base = rng.integers(0, 255, (480, 640, 3), dtype=np.uint8)
  with av.open(path, "w") as container:
    stream = container.add_stream(codec, rate=30)
    stream.width, stream.height, stream.pix_fmt = 640, 480, "yuv420p"
    for i in range(seconds * 30):
      frame = av.VideoFrame.from_ndarray(np.roll(base, 4 * i, axis=1), format="rgb24")
      for packet in stream.encode(frame):
        container.mux(packet)
    for packet in stream.encode():
      container.mux(packet)


def end_to_end(narrator, args) -> None:
  from data_prep.narration import pipeline as narrate  # pylint: disable=import-outside-toplevel
  rng = np.random.default_rng(1)
  with tempfile.TemporaryDirectory() as folder:
    videos = []
    for k in range(args.videos):
      path = os.path.join(folder, f"video{k}.mp4")
      write_video(path, args.seconds, rng)
      videos.append((f"video{k}", path))
    print(f"\nend to end: {args.videos} videos x {args.seconds} s, 640x480, 30 fps")
    print("| batch | decode workers | frames/s |")
    print("| --- | --- | --- |")
    for batch in [int(b) for b in args.batch_sizes.split(",")]:
      for workers in [int(w) for w in args.decode_workers.split(",")]:
        out = os.path.join(folder, f"narratives-{batch}-{workers}.jsonl")
        summary = narrate.narrate(narrator, videos, out, batch_size=batch, progress=False,
                                  decode_workers=workers)
        print(f"| {batch} | {workers} | {summary['frames_per_second']:.2f} |")


if __name__ == "__main__":
  main()
