"""Extract I3D features from a folder of videos with VSLNet's Charades-STA recipe.

    python -m data_prep.extract_features --videos DIR --weights rgb_charades.pt --out features/ \\
        [--batch-size 8] [--decode-workers 2] [--num-shards K --shard-index I] \\
        [--video-ids FILE] [--precision highest|default]

Each video is decoded at 24 fps (ffmpeg's fps filter semantics, data_prep.frames.frames_at_fps)
in one of several threads, prepared frame by frame (short side resized up to 226 when smaller,
centre crop 224) and cut into windows of 24 frames; windows of several videos share each jitted
I3D call (fixed batch, the last one padded), and each video gives 2 rows of 1024 per window:
`<out>/<video_id>.npy` float32 (T, 1024), and `<out>/feature_shapes.json` {video_id: T}. The code
path is tea_jax.i3d.Extractor's, the same as `Extractor.video_features`.

--weights takes a PyTorch checkpoint (rgb_charades.pt, rgb_imagenet.pt; needs torch) or an .npz
written by `python -m tea_jax.i3d.convert` (needs no torch). Every file is written atomically, so a
rerun skips the videos whose .npy exists and redoes the rest. Videos that cannot be decoded or are
too short (< 10 frames) are listed in `<out>/failures.jsonl` ({"video_id", "path", "reason"}),
which each run rewrites; with --num-shards K the videos (sorted by id) are split round-robin and
shard I writes `failures.<I>-of-<K>.jsonl` instead. feature_shapes.json lists every .npy of the
folder (all shards), rewritten every minute and at the end.
"""

import argparse
import fcntl
import glob
import json
import os
import queue
import sys
import threading
import time

import numpy as np
from tqdm import tqdm

from data_prep.frames import UnreadableVideo, frames_at_fps
from data_prep.narration.pipeline import select_videos
from tea_jax import cli
from tea_jax.errors import InputError
from tea_jax.files import atomic_write, write_json, write_lines
from tea_jax.i3d import Extractor, recipe

SHAPES_FILE = "feature_shapes.json"
SHAPES_EVERY_SECONDS = 60.0


def failures_path(out_dir: str, num_shards: int = 1, shard_index: int = 0) -> str:
  """`failures.jsonl`, or `failures.<I>-of-<K>.jsonl` for a shard (shards share the folder)."""
  if num_shards == 1:
    return os.path.join(out_dir, "failures.jsonl")
  return os.path.join(out_dir, f"failures.{shard_index:05d}-of-{num_shards:05d}.jsonl")


def write_feature_shapes(out_dir: str) -> dict[str, int]:
  """Rewrites feature_shapes.json from the headers of every .npy in `out_dir` (a lock keeps two
  shards from writing at once, so the last writer lists every finished video)."""
  with open(os.path.join(out_dir, ".feature_shapes.lock"), "w", encoding="utf-8") as lock:
    fcntl.flock(lock, fcntl.LOCK_EX)
    shapes = {}
    for path in sorted(glob.glob(os.path.join(glob.escape(out_dir), "*.npy"))):
      rows = np.load(path, mmap_mode="r").shape[0]  # reads the header only
      shapes[os.path.basename(path)[:-len(".npy")]] = int(rows)
    write_json(os.path.join(out_dir, SHAPES_FILE), shapes)
  return shapes


def decode_clip(path: str) -> np.ndarray:
  """The prepared (N, 224, 224, 3) uint8 clip of a video file; UnreadableVideo or ValueError
  naming the file when it cannot be decoded or is too short."""
  clip = recipe.prepare_clip(frames_at_fps(path, recipe.FPS))
  recipe.check_length(len(clip), path)
  return clip


def _decode_worker(videos, lock: threading.Lock, clips: queue.Queue, stop: threading.Event):
  """Decoding thread: takes videos from the shared iterator, puts (vid, path, clip, error)."""
  while not stop.is_set():
    with lock:
      item = next(videos, None)
    if item is None:
      break
    vid, path = item
    try:
      clips.put((vid, path, decode_clip(path), None))
    except (UnreadableVideo, ValueError) as e:
      clips.put((vid, path, None, str(e)))
    except Exception as e:  # pylint: disable=broad-except
      clips.put((vid, path, None, f"{path}: {type(e).__name__}: {e}"))  # a decoder crash
  clips.put(None)


class _Run:
  """Bookkeeping of one extraction run: failures, counters, the progress bar."""

  def __init__(self, out_dir: str, failures_file: str, total: int, progress: bool):
    self.out_dir, self.failures_file = out_dir, failures_file
    self.failures: list[dict] = []
    self.written = self.windows = 0
    self.video_seconds = 0.0
    self.bar = tqdm(total=total, unit="video", desc="i3d", disable=not progress,
                    dynamic_ncols=True)
    self.started = self.shapes_written_at = time.time()

  def fail(self, vid: str, path: str, reason: str) -> None:
    self.failures.append({"video_id": vid, "path": path, "reason": reason})
    write_lines(self.failures_file, self.failures)
    self.bar.update(1)
    self.bar.set_postfix(failed=len(self.failures))

  def save(self, vid: str, features: np.ndarray, num_frames: int) -> None:
    path = os.path.join(self.out_dir, f"{vid}.npy")
    atomic_write(path, lambda f: np.save(f, features), binary=True)
    self.written += 1
    self.windows += len(recipe.window_bounds(num_frames))
    self.video_seconds += num_frames / recipe.FPS
    self.bar.update(1)
    self.bar.set_postfix(windows_per_s=f"{self.windows / (time.time() - self.started):.2f}",
                         failed=len(self.failures))
    if time.time() - self.shapes_written_at > SHAPES_EVERY_SECONDS:
      write_feature_shapes(self.out_dir)
      self.shapes_written_at = time.time()


def _clips(clips: queue.Queue, workers: int, run: _Run, frames: dict):
  """The decoded clips in the order they finish, failures filed on the way."""
  live = workers
  while live:
    item = clips.get()
    if item is None:
      live -= 1
      continue
    vid, path, clip, error = item
    if error is not None:
      run.fail(vid, path, error)
      continue
    frames[vid] = len(clip)
    yield vid, clip


def extract(extractor, videos: list[tuple[str, str]], out_dir: str, decode_workers: int = 2,
            failures_file: str | None = None, progress: bool = True) -> dict:
  """Writes the features of every video of `videos` ((id, path) pairs) that has no .npy in
  `out_dir` yet; returns a summary."""
  if decode_workers < 1:
    raise ValueError(f"decode_workers must be at least 1, got {decode_workers}")
  os.makedirs(out_dir, exist_ok=True)
  todo = [(vid, path) for vid, path in videos
          if not os.path.isfile(os.path.join(out_dir, f"{vid}.npy"))]
  failures_file = failures_file or failures_path(out_dir)
  write_lines(failures_file, [])  # a rerun's list replaces the last one
  run = _Run(out_dir, failures_file, len(todo), progress)
  # Each queued clip is a whole video (about 150 kB per frame): a short queue bounds the memory.
  clips: queue.Queue = queue.Queue(maxsize=decode_workers)
  stop, lock, source = threading.Event(), threading.Lock(), iter(todo)
  workers = [threading.Thread(target=_decode_worker, args=(source, lock, clips, stop), daemon=True,
                              name=f"i3d-decode-{k}") for k in range(decode_workers)]
  for worker in workers:
    worker.start()
  frames: dict[str, int] = {}
  started = time.time()
  try:
    for vid, features in extractor.stream(_clips(clips, decode_workers, run, frames)):
      run.save(vid, features, frames.pop(vid))
  finally:
    stop.set()
    run.bar.close()
  shapes = write_feature_shapes(out_dir)
  seconds = time.time() - started
  return {"out": out_dir, "videos_written": run.written, "videos_failed": len(run.failures),
          "videos_skipped_as_done": len(videos) - len(todo), "videos_in_folder": len(shapes),
          "windows": run.windows, "seconds": round(seconds, 2),
          "videos_per_second": round(run.written / max(seconds, 1e-9), 3),
          "windows_per_second": round(run.windows / max(seconds, 1e-9), 3),
          "video_seconds_per_second": round(run.video_seconds / max(seconds, 1e-9), 3)}


def parse_args(argv):
  parser = argparse.ArgumentParser(prog="python -m data_prep.extract_features",
                                   description=__doc__.split("\n")[0])
  parser.add_argument("--videos", required=True, help="folder of <video_id>.mp4/.mkv/.webm/...")
  parser.add_argument("--weights", required=True,
                      help="rgb_charades.pt / rgb_imagenet.pt, or an .npz of tea_jax.i3d.convert")
  parser.add_argument("--out", required=True, help="output folder of <video_id>.npy")
  parser.add_argument("--batch-size", type=int, default=8, help="24-frame windows per jit call")
  parser.add_argument("--decode-workers", type=int, default=2, help="video decoding threads")
  parser.add_argument("--num-shards", type=int, default=1)
  parser.add_argument("--shard-index", type=int, default=0)
  parser.add_argument("--video-ids", help="optional file: the video ids to extract, one a line")
  parser.add_argument("--precision", choices=("highest", "default"), default="highest",
                      help="convolution precision: highest (full float32) or the backend's "
                           "default (on recent NVIDIA GPUs TF32: faster, not full float32)")
  return parser.parse_args(argv)


def run(args) -> dict:
  """The command's work: checks, the videos of this shard, the extractor, the extraction."""
  for flag in ("batch_size", "decode_workers"):
    value = getattr(args, flag)
    if value < 1:
      raise InputError(f"--{flag.replace('_', '-')} must be at least 1, got {value}")
  videos = select_videos(args.videos, args.video_ids, args.num_shards, args.shard_index)
  extractor = Extractor.from_weights(args.weights, batch_size=args.batch_size,
                                     precision=None if args.precision == "default" else "highest")
  return extract(extractor, videos, args.out, args.decode_workers,
                 failures_path(args.out, args.num_shards, args.shard_index))


def main(argv=None) -> int:
  """The command; bad input is one line and exit status 2."""
  args = parse_args(sys.argv[1:] if argv is None else argv)
  status, summary = cli.call_reporting(lambda: run(args))
  if not status:
    print(json.dumps(summary, indent=1))
  return status


if __name__ == "__main__":
  sys.exit(main())
