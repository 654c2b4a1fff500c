"""I3D feature extraction throughput: windows/s and seconds of video per second of compute.

    python bench/extract_features.py [--batch-sizes 1,4] [--windows 8] [--precision highest]
                                     [--end-to-end --videos 2 --seconds 8 --size 480x270 --fps 30
                                      --decode-workers 2 --batch-size 4]

Model only: random weights in the public layout (no checkpoint, no torch), blank 24-frame uint8
windows of 224 x 224 through the jitted network (compilation excluded), for each batch size. A
window is 24 frames at 24 fps, one second of video, so windows/s is also seconds of video per
second. With --end-to-end it also times `data_prep.extract_features.extract` (PyAV decoding
threads at 24 fps, resize/crop, batching across videos, atomic .npy writes) on generated videos;
its ratio also counts the last window of each video, which overlaps the one before.
Runs on whatever JAX backend is present (CPU here, the GPU when there is one); needs no TensorFlow.
"""

import argparse
import os
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax  # noqa: E402
import numpy as np  # noqa: E402

from tea_jax.i3d import Extractor, importer  # noqa: E402


def random_variables(num_classes: int = 157, seed: int = 0) -> dict:
  """Random Flax variables through the importer (He-scaled convs, BatchNorm near identity)."""
  rng = np.random.default_rng(seed)
  state = {}
  for key, shape in importer.public_layout(num_classes).items():
    if key.endswith("conv3d.weight"):
      state[key] = (rng.normal(size=shape) * np.sqrt(2 / np.prod(shape[1:]))).astype(np.float32)
    elif key.endswith(("bn.weight", "bn.running_var")):
      state[key] = np.ones(shape, np.float32)
    elif not key.endswith("num_batches_tracked"):
      state[key] = np.zeros(shape, np.float32)
  return importer.convert_state_dict(state)[1]


def model_only(variables, batch_sizes, windows: int, precision) -> None:
  """Prints windows/s of the jitted network for each batch size."""
  print("| batch | windows/s | ms per window | video s per s |")
  print("| --- | --- | --- | --- |")
  for batch in batch_sizes:
    extractor = Extractor(variables, 157, batch_size=batch, precision=precision)
    blank = np.zeros((batch, 24, 224, 224, 3), np.uint8)
    extractor.run_windows(blank)  # compile
    calls = max(1, -(-windows // batch))
    start = time.perf_counter()
    for _ in range(calls):
      extractor.run_windows(blank)
    rate = calls * batch / (time.perf_counter() - start)
    print(f"| {batch} | {rate:.2f} | {1000 / rate:.0f} | {rate:.2f} |")


def end_to_end(variables, args, precision) -> None:
  """Times data_prep.extract_features.extract on generated videos."""
  from data_prep import extract_features  # pylint: disable=import-outside-toplevel
  from data_prep.narration.pipeline import select_videos  # pylint: disable=import-outside-toplevel
  from data_prep.testing.videos import write_moving_video  # pylint: disable=import-outside-toplevel
  width, height = (int(s) for s in args.size.split("x"))
  with tempfile.TemporaryDirectory() as tmp:
    videos = os.path.join(tmp, "videos")
    os.makedirs(videos)
    for k in range(args.videos):
      write_moving_video(os.path.join(videos, f"v{k:03d}.mp4"), args.seconds, args.fps,
                         (width, height), seed=k)
    extractor = Extractor(variables, 157, batch_size=args.batch_size, precision=precision)
    extractor.run_windows(np.zeros((args.batch_size, 24, 224, 224, 3), np.uint8))  # compile
    print(f"\nend to end: {args.videos} videos of {args.seconds} s, {width}x{height} at "
          f"{args.fps} fps (mpeg4), batch {args.batch_size}")
    print("| decode workers | videos/s | windows/s | video s per s |")
    print("| --- | --- | --- | --- |")
    for workers in [int(w) for w in args.decode_workers.split(",")]:
      out = os.path.join(tmp, f"out{workers}")
      s = extract_features.extract(extractor, select_videos(videos), out, workers, progress=False)
      print(f"| {workers} | {s['videos_per_second']:.3f} | {s['windows_per_second']:.2f} | "
            f"{s['video_seconds_per_second']:.2f} |")


def main():
  parser = argparse.ArgumentParser(description=" ".join(__doc__.split("\n\n")[0].split()))
  parser.add_argument("--batch-sizes", default="1,4")
  parser.add_argument("--windows", type=int, default=8, help="windows timed per batch size")
  parser.add_argument("--precision", choices=("highest", "default"), default="highest")
  parser.add_argument("--end-to-end", action="store_true")
  parser.add_argument("--videos", type=int, default=2)
  parser.add_argument("--seconds", type=float, default=8)
  parser.add_argument("--size", default="480x270", help="generated video WIDTHxHEIGHT")
  parser.add_argument("--fps", type=int, default=30, help="generated video frame rate")
  parser.add_argument("--batch-size", type=int, default=4, help="windows per call, end to end")
  parser.add_argument("--decode-workers", default="2")
  args = parser.parse_args()
  precision = None if args.precision == "default" else "highest"
  device = jax.devices()[0]
  print(f"backend={jax.default_backend()} device={device.device_kind} jax={jax.__version__} "
        f"cpus={os.cpu_count()} load={os.getloadavg()[0]:.1f} precision={args.precision}")
  variables = random_variables()
  model_only(variables, [int(b) for b in args.batch_sizes.split(",")], args.windows, precision)
  if args.end_to_end:
    end_to_end(variables, args, precision)


if __name__ == "__main__":
  main()
