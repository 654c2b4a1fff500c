"""Narrate videos with an MLLM: one caption every `interval` seconds (TEA's "video narrator").

    python -m data_prep.narrate --videos DIR --model MODEL_DIR --out narratives.jsonl \\
        [--backend llava|blip2] [--interval 1.0] [--batch-size 16] [--max-new-tokens 80] \\
        [--num-shards K --shard-index I] [--video-ids FILE] [--decode-workers 2] \\
        [--device auto] [--dtype auto]
    python -m data_prep.narrate merge --out narratives.jsonl SHARD.jsonl ... \\
        [--videos DIR | --video-ids FILE]

One JSON line per finished video:
  {"video_id", "interval", "narratives": [{"t", "text"}], "model", "prompt"}
written, flushed and fsync'ed as soon as the video's last frame is captioned, so a crash loses at
most the videos in flight; a restart skips every video already in the output (a line cut short by
a crash is dropped and its video redone). Frames of several videos share a batch, so short videos
keep the GPU busy; decoding runs in a background thread, and the next batch's image preprocessing
in another while the model generates. Unreadable, corrupt or empty videos go to
`<out>.failures.jsonl` with the reason, and the run goes on. With --num-shards K the videos (sorted
by id) are split round-robin and shard I writes `<out stem>.<I>-of-<K>.jsonl`; `merge` joins the
shards and checks that no video is missing or duplicated.
"""

import argparse
import collections
import concurrent.futures
import json
import os
import queue
import sys
import threading
import time

from tqdm import tqdm

from data_prep.frames import UnreadableVideo, duration_seconds, find_videos, sample_frames
from tea_jax.files import atomic_write


def select_videos(videos_dir: str, video_ids_file: str | None = None, num_shards: int = 1,
                  shard_index: int = 0) -> list[tuple[str, str]]:
  """(video_id, path) of this shard: the folder's videos (or the listed subset), sorted by id,
  every num_shards-th starting at shard_index."""
  if not 0 <= shard_index < num_shards:
    raise ValueError(f"--shard-index {shard_index} must be in [0, {num_shards})")
  found = find_videos(videos_dir)
  if video_ids_file:
    with open(video_ids_file, encoding="utf-8") as f:
      wanted = [line.strip() for line in f if line.strip()]
    missing = [v for v in wanted if v not in found]
    if missing:
      raise FileNotFoundError(f"{len(missing)} videos of {video_ids_file} are not in "
                              f"{videos_dir}, e.g. {missing[:5]}")
    ids = sorted(set(wanted))
  else:
    ids = sorted(found)
  return [(vid, found[vid]) for i, vid in enumerate(ids) if i % num_shards == shard_index]


def shard_path(out: str, num_shards: int, shard_index: int) -> str:
  if num_shards == 1:
    return out
  stem, ext = os.path.splitext(out)
  return f"{stem}.{shard_index:05d}-of-{num_shards:05d}{ext or '.jsonl'}"


def finished_videos(path: str) -> set[str]:
  """Videos already narrated in `path`; a trailing partial line (a crash mid-write) is cut off."""
  if not os.path.exists(path):
    return set()
  done = set()
  with open(path, "rb+") as f:
    data = f.read()
    end = data.rfind(b"\n") + 1
    if end < len(data):
      f.truncate(end)  # drop the line a crash left unfinished
    for line in data[:end].splitlines():
      try:
        done.add(json.loads(line)["video_id"])
      except (json.JSONDecodeError, KeyError, TypeError):
        continue
  return done


class LineWriter:
  """Appends JSON lines durably: write, flush, fsync."""

  def __init__(self, path: str):
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    self.f = open(path, "a", encoding="utf-8")  # pylint: disable=consider-using-with

  def write(self, record: dict) -> None:
    self.f.write(json.dumps(record, ensure_ascii=False) + "\n")
    self.f.flush()
    os.fsync(self.f.fileno())

  def close(self) -> None:
    self.f.close()


_END = object()


def _produce(videos, lock: threading.Lock, interval, frames: queue.Queue, stop: threading.Event):
  """Decoding worker: takes the next video from the shared iterator `videos`; puts (vid, t, image)
  per frame, then (vid, _END, error or None) per video, and None when no video is left."""
  while not stop.is_set():
    with lock:
      item = next(videos, None)
    if item is None:
      break
    vid, path = item
    error = None
    try:
      for t, image in sample_frames(path, interval):
        frames.put((vid, t, image))
        if stop.is_set():
          break
    except UnreadableVideo as e:
      error = str(e)
    except Exception as e:  # pylint: disable=broad-except
      error = f"{path}: {type(e).__name__}: {e}"  # a decoder crash must not stop the run
    frames.put((vid, _END, error))
  frames.put(None)


def narrate(narrator, videos: list[tuple[str, str]], out: str, interval: float = 1.0,
            batch_size: int = 16, progress: bool = True, decode_workers: int = 2) -> dict:
  """Captions every frame of `videos` not already in `out`; returns a summary.

  `decode_workers` threads decode different videos at once (PyAV releases the GIL): one thread
  decodes a 480p H.264 video at about 85 sampled frames/s on one core, but HD videos need several to
  keep up with a GPU narrating 25+ frames/s."""
  if decode_workers < 1:
    raise ValueError(f"decode_workers must be at least 1, got {decode_workers}")
  done = finished_videos(out)
  todo = [(vid, path) for vid, path in videos if vid not in done]
  failures = LineWriter(out + ".failures.jsonl")
  writer = LineWriter(out)
  total = sum(max(1, int(duration_seconds(p) // interval) + 1) for _, p in todo) if progress else 0
  bar = tqdm(total=total, unit="frame", desc="narrate", disable=not progress, dynamic_ncols=True)
  frames: queue.Queue = queue.Queue(maxsize=4 * batch_size)
  stop = threading.Event()
  source, lock = iter(todo), threading.Lock()
  producers = [threading.Thread(target=_produce, args=(source, lock, interval, frames, stop),
                                daemon=True, name=f"narrate-decode-{k}")
               for k in range(decode_workers)]
  for producer in producers:
    producer.start()
  live_producers = len(producers)
  captions = collections.defaultdict(list)  # vid -> [(t, text)]
  pending = collections.Counter()  # vid -> frames not yet captioned
  ended: dict[str, str | None] = {}
  batch, written, failed, n_frames = [], 0, 0, 0
  started = time.time()

  def flush_finished():
    nonlocal written, failed
    for vid in [v for v in ended if pending[v] == 0]:
      error = ended.pop(vid)
      items = captions.pop(vid, [])
      if error is not None and not items:
        failures.write({"video_id": vid, "reason": error})
        failed += 1
        continue
      writer.write({"video_id": vid, "interval": interval,
                    "narratives": [{"t": t, "text": text} for t, text in sorted(items)],
                    "model": narrator.name, "prompt": narrator.prompt_text()})
      written += 1

  # Two-stage pipeline: the processor prepares batch k + 1 in a worker thread while the model
  # generates batch k (image preprocessing costs ~7 ms per frame on one CPU core: a fifth of the
  # time at 25 frames/s if it ran in turn with the GPU).
  preparer = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="narrate-prepare")
  in_flight = None  # (frames of the batch, future of its prepared inputs)

  def finish_in_flight():
    nonlocal n_frames, in_flight
    items, prepared = in_flight
    in_flight = None
    texts = narrator.generate(prepared.result())
    for (vid, t, _), text in zip(items, texts):
      captions[vid].append((t, text))
      pending[vid] -= 1
    n_frames += len(items)
    bar.update(len(items))
    bar.set_postfix(videos=written, failed=failed)

  def run_batch():
    nonlocal in_flight
    items = list(batch)
    batch.clear()
    prepared = preparer.submit(narrator.prepare, [image for _, _, image in items])
    if in_flight is not None:
      finish_in_flight()
    in_flight = (items, prepared)

  try:
    while True:
      item = frames.get()
      if item is None:
        live_producers -= 1
        if live_producers == 0:
          break
        continue
      vid, t, payload = item
      if t is _END:
        ended[vid] = payload
        if not batch:
          flush_finished()
        continue
      pending[vid] += 1
      batch.append((vid, t, payload))
      if len(batch) == batch_size:
        run_batch()
        flush_finished()
    if batch:
      run_batch()
    if in_flight is not None:
      finish_in_flight()
    flush_finished()
  finally:
    stop.set()
    preparer.shutdown(cancel_futures=True)
    bar.close()
    writer.close()
    failures.close()
  seconds = time.time() - started
  return {"out": out, "videos_written": written, "videos_failed": failed,
          "videos_skipped_as_done": len(videos) - len(todo), "frames": n_frames,
          "seconds": round(seconds, 2), "frames_per_second": round(n_frames / max(seconds, 1e-9),
                                                                    3)}


def merge(shards: list[str], out: str, expected: set[str] | None = None) -> dict:
  """Joins shard outputs (sorted by video id) into `out` atomically; errors on duplicates and on
  videos of `expected` that no shard has."""
  records, origin, duplicates = {}, {}, []
  for shard in shards:
    if not os.path.isfile(shard):
      raise FileNotFoundError(f"shard output not found: {shard}")
    with open(shard, encoding="utf-8") as f:
      for number, line in enumerate(f, start=1):
        if not line.strip():
          continue
        try:
          vid = json.loads(line)["video_id"]
        except (json.JSONDecodeError, KeyError, TypeError):
          raise ValueError(f"{shard}:{number}: not a narration line") from None
        if vid in records:
          duplicates.append(f"{vid} ({origin[vid]} and {shard}:{number})")
        records[vid], origin[vid] = line if line.endswith("\n") else line + "\n", f"{shard}:{number}"
  if duplicates:
    raise ValueError(f"{len(duplicates)} videos appear in more than one line: {duplicates[:5]}")
  missing = sorted(expected - set(records)) if expected is not None else []
  if missing:
    raise ValueError(f"{len(missing)} videos have no narration in the shards, e.g. {missing[:10]}")
  atomic_write(out, lambda f: f.writelines(records[vid] for vid in sorted(records)))
  return {"out": out, "videos": len(records), "shards": len(shards)}


def _narrate_main(argv) -> int:
  parser = argparse.ArgumentParser(prog="python -m data_prep.narrate",
                                   description=__doc__.split("\n")[0])
  parser.add_argument("--videos", required=True, help="folder of <video_id>.mp4/.mkv/.webm")
  parser.add_argument("--model", required=True, help="local Hugging Face model directory")
  parser.add_argument("--out", required=True, help="output JSON lines file")
  parser.add_argument("--backend", choices=("llava", "blip2"), default="llava")
  parser.add_argument("--interval", type=float, default=1.0, help="seconds between frames")
  parser.add_argument("--batch-size", type=int, default=16, help="frames per generate() call")
  parser.add_argument("--max-new-tokens", type=int, default=80)
  parser.add_argument("--num-shards", type=int, default=1)
  parser.add_argument("--shard-index", type=int, default=0)
  parser.add_argument("--video-ids", help="optional file: the video ids to narrate, one a line")
  parser.add_argument("--decode-workers", type=int, default=2,
                      help="threads decoding videos in parallel (more for HD videos)")
  parser.add_argument("--device", default="auto", help="auto (CUDA if present), cpu, cuda, cuda:1")
  parser.add_argument("--dtype", default="auto", help="auto (bf16 on CUDA, float32 on CPU), "
                                                      "float32, bfloat16, float16")
  args = parser.parse_args(argv)
  from data_prep.narration.narrators import BACKENDS  # pylint: disable=import-outside-toplevel
  try:
    for flag in ("batch_size", "decode_workers", "max_new_tokens"):
      value = getattr(args, flag)
      if value < 1:
        raise ValueError(f"--{flag.replace('_', '-')} must be at least 1, got {value}")
    videos = select_videos(args.videos, args.video_ids, args.num_shards, args.shard_index)
    narrator = BACKENDS[args.backend](args.model, args.device, args.dtype, args.max_new_tokens)
  except (FileNotFoundError, ValueError, RuntimeError) as e:
    print(f"error: {e}", file=sys.stderr)
    return 2
  out = shard_path(args.out, args.num_shards, args.shard_index)
  summary = narrate(narrator, videos, out, args.interval, args.batch_size,
                    decode_workers=args.decode_workers)
  print(json.dumps(summary, indent=1))
  return 0


def _merge_main(argv) -> int:
  parser = argparse.ArgumentParser(prog="python -m data_prep.narrate merge",
                                   description="Join shard outputs; check completeness.")
  parser.add_argument("shards", nargs="+")
  parser.add_argument("--out", required=True)
  parser.add_argument("--videos", help="folder whose videos must all be narrated")
  parser.add_argument("--video-ids", help="file of the video ids that must all be narrated")
  args = parser.parse_args(argv)
  expected = None
  try:
    if args.video_ids:
      with open(args.video_ids, encoding="utf-8") as f:
        expected = {line.strip() for line in f if line.strip()}
    elif args.videos:
      expected = set(find_videos(args.videos))
    print(json.dumps(merge(args.shards, args.out, expected), indent=1))
  except (FileNotFoundError, ValueError) as e:
    print(f"error: {e}", file=sys.stderr)
    return 1
  return 0


def main(argv=None) -> int:
  argv = sys.argv[1:] if argv is None else argv
  if argv and argv[0] == "merge":
    return _merge_main(argv[1:])
  return _narrate_main(argv)
