"""Narrate videos with an MLLM: one caption every `interval` seconds (TEA's "video narrator").

Three stages, each its own piece: decoding threads (FrameSource) put sampled frames on a queue;
the batching loop (`narrate`) groups frames of several videos into batches, so short videos keep
the GPU busy, and the Captioner prepares batch k + 1 (image preprocessing) in a worker thread while
the model generates batch k; the VideoWriter collects each video's captions and writes its line
(flushed and fsync'ed) as soon as its last frame is captioned, so a crash loses at most the videos
in flight. A restart skips every video already in the output (bad lines are dropped and redone,
see outputs.finished_videos). Videos that cannot be decoded go to the failures file with the
reason, one line per video, and the run goes on; a later success removes the line.
"""

import collections
import concurrent.futures
import logging
import os
import queue
import threading
import time

from tqdm import tqdm

from data_prep.frames import UnreadableVideo, duration_seconds, find_videos, sample_frames
from data_prep.narration.outputs import (FailureLog, LineWriter, SettingsSeen, failures_path,
                                         finished_videos)
from data_prep.narration.settings import line_settings
from tea_jax.errors import InputError

log = logging.getLogger(__name__)


def select_videos(videos_dir: str, video_ids_file: str | None = None, num_shards: int = 1,
                  shard_index: int = 0) -> list[tuple[str, str]]:
  """(video_id, path) of this shard: the folder's videos (or the listed subset), sorted by id,
  every num_shards-th starting at shard_index."""
  if num_shards < 1 or not 0 <= shard_index < num_shards:
    raise InputError(f"--shard-index {shard_index} must be in [0, --num-shards {num_shards})")
  try:
    found = find_videos(videos_dir)
  except FileNotFoundError as e:
    raise InputError(str(e)) from None
  if video_ids_file:
    wanted = read_video_ids(video_ids_file)
    missing = [v for v in wanted if v not in found]
    if missing:
      raise InputError(f"{len(missing)} videos of {video_ids_file} are not in {videos_dir}, e.g. "
                     f"{missing[:5]}")
    ids = sorted(set(wanted))
  else:
    ids = sorted(found)
  return [(vid, found[vid]) for i, vid in enumerate(ids) if i % num_shards == shard_index]


def read_video_ids(path: str) -> list[str]:
  """The ids of a --video-ids file, one a line."""
  try:
    with open(path, encoding="utf-8") as f:
      return [line.strip() for line in f if line.strip()]
  except OSError as e:
    raise InputError(f"cannot read the video id list {path}: {e}") from None


def shard_path(out: str, num_shards: int, shard_index: int) -> str:
  """The output file of shard `shard_index` of `num_shards`."""
  if num_shards == 1:
    return out
  stem, ext = os.path.splitext(out)
  return f"{stem}.{shard_index:05d}-of-{num_shards:05d}{ext or '.jsonl'}"


def expected_frames(videos: list[tuple[str, str]], interval: float) -> int:
  """Frames the videos will give (from container durations): the progress bar's total."""
  return sum(max(1, int(duration_seconds(path) // interval) + 1) for _, path in videos)


_END = object()  # the marker after a video's last frame: (vid, _END, error or None)


class FrameSource:
  """Decoding stage: `workers` threads take the next video from a shared list and put its sampled
  frames (vid, t, image), then (vid, _END, error or None), on a bounded queue. PyAV releases the
  GIL, so threads decode videos in parallel: one decodes a 480p H.264 video at about 85 sampled
  frames/s on one core, and HD videos need several to keep up with a GPU at 25+ frames/s."""

  def __init__(self, videos: list[tuple[str, str]], interval: float, workers: int,
               queue_size: int):
    self.interval = interval
    self.frames: queue.Queue = queue.Queue(maxsize=queue_size)
    self.stop = threading.Event()
    self._videos, self._lock = iter(videos), threading.Lock()
    self.threads = [threading.Thread(target=self._produce, daemon=True, name=f"narrate-decode-{k}")
                    for k in range(workers)]
    for thread in self.threads:
      thread.start()

  def _put(self, item) -> bool:
    """Puts `item` unless the source was closed (a full queue does not block a closing run)."""
    while not self.stop.is_set():
      try:
        self.frames.put(item, timeout=0.1)
        return True
      except queue.Full:
        continue
    return False

  def _produce(self) -> None:
    """One decoding thread: videos from the shared list until none is left."""
    while not self.stop.is_set():
      with self._lock:
        item = next(self._videos, None)
      if item is None:
        break
      vid, path = item
      error = None
      try:
        for t, image in sample_frames(path, self.interval):
          if not self._put((vid, t, image)):
            return
      except UnreadableVideo as e:
        error = str(e)
      except Exception as e:  # pylint: disable=broad-except
        error = f"{path}: {type(e).__name__}: {e}"  # a decoder crash must not stop the run
      self._put((vid, _END, error))
    self._put(None)

  def __iter__(self):
    """The decoded items until every thread has finished."""
    live = len(self.threads)
    while live:
      item = self.frames.get()
      if item is None:
        live -= 1
        continue
      yield item

  def close(self) -> None:
    self.stop.set()
    for thread in self.threads:
      thread.join(timeout=5)


class Captioner:
  """Generation stage: the processor prepares batch k + 1 in a worker thread while the model
  generates batch k (preprocessing costs ~6 ms per frame on one CPU core: a seventh of the time
  at 25 frames/s if it ran in turn with the GPU)."""

  def __init__(self, narrator):
    self.narrator = narrator
    self.pool = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="narrate-prepare")
    self.in_flight = None  # (frames of the batch, future of its prepared inputs)

  def submit(self, items: list) -> tuple[list, list[str]] | None:
    """Starts preparing `items` [(vid, t, image)]; returns the previous batch captioned."""
    prepared = self.pool.submit(self.narrator.prepare, [image for _, _, image in items])
    done = self.drain()
    self.in_flight = (items, prepared)
    return done

  def drain(self) -> tuple[list, list[str]] | None:
    """Captions the batch in flight: (its items, their texts), or None."""
    if self.in_flight is None:
      return None
    items, prepared = self.in_flight
    self.in_flight = None
    return items, self.narrator.generate(prepared.result())

  def close(self) -> None:
    self.pool.shutdown(cancel_futures=True)


def output_line(narrator, video_id: str, interval: float, captions: list) -> dict:
  """The output line of a video: its [(t, text)] captions and what they were narrated with."""
  return {"video_id": video_id, "interval": interval,
          "narratives": [{"t": t, "text": text} for t, text in captions],
          "model": narrator.name, "prompt": narrator.prompt_text(),
          "settings": narrator.settings.recorded()}


class VideoWriter:
  """Writer stage: collects captions per video and writes a video's line once all its frames are
  captioned and its decoding ended; a video whose decoding failed goes to the failures file."""

  def __init__(self, out: str, narrator, interval: float, failures: FailureLog):
    self.narrator, self.interval, self.failures = narrator, interval, failures
    self.lines = LineWriter(out)
    self.captions = collections.defaultdict(list)  # vid -> [(t, text)]
    self.pending = collections.Counter()  # vid -> frames not captioned yet
    self.ended: dict[str, str | None] = {}  # vid -> decoding error or None
    self.written = self.failed = 0

  def add_frame(self, vid: str) -> None:
    """Counts a frame of `vid` that awaits its caption."""
    self.pending[vid] += 1

  def end(self, vid: str, error: str | None) -> None:
    """Notes that `vid`'s decoding ended (with `error` or None)."""
    self.ended[vid] = error
    self.flush()

  def captioned(self, items: list, texts: list[str]) -> None:
    """Takes the captions of a batch's frames."""
    for (vid, t, _), text in zip(items, texts):
      self.captions[vid].append((t, text))
      self.pending[vid] -= 1
    self.flush()

  def flush(self) -> None:
    """Writes every video whose decoding ended and whose frames are all captioned."""
    for vid in [v for v in self.ended if self.pending[v] == 0]:
      error, items = self.ended.pop(vid), self.captions.pop(vid, [])
      del self.pending[vid]
      if error is not None:  # a video is narrated whole or recorded as failed, never in part
        self.failures.record(vid, error)
        self.failed += 1
        continue
      self.lines.write(output_line(self.narrator, vid, self.interval, sorted(items)))
      self.failures.clear([vid])
      self.written += 1

  def close(self) -> None:
    self.lines.close()


def check_settings(interval: float, batch_size: int | None, decode_workers: int) -> None:
  """Bad settings are InputError (checked before a model is loaded)."""
  if not interval > 0:
    raise InputError(f"--interval must be positive, got {interval}")
  if batch_size is not None and batch_size < 1:
    raise InputError(f"--batch-size must be at least 1, got {batch_size}")
  if decode_workers < 1:
    raise InputError(f"--decode-workers must be at least 1, got {decode_workers}")


def run_settings(settings, interval: float) -> dict:
  """What a run with NarrationSettings `settings` records, as settings.line_settings compares it."""
  return line_settings({"settings": settings.recorded(), "prompt": settings.prompt,
                        "interval": interval})


def resume_point(settings, out: str, interval: float) -> set[str]:
  """The videos already in `out`, whose lines must have been narrated with `settings` and
  `interval` (else one-line InputError: one output holds one setting)."""
  seen = SettingsSeen()
  done = finished_videos(out, seen)
  seen.check_against(run_settings(settings, interval), out)
  return done


def narrate(narrator, videos: list[tuple[str, str]], out: str, interval: float = 1.0,
            batch_size: int | None = 16, progress: bool = True, decode_workers: int = 2,
            on_progress=None) -> dict:
  """Captions every frame of `videos` not already in `out`; returns a summary. `batch_size` None
  takes the narrator's auto_batch_size (free device memory); `on_progress(frames, written, failed)`
  is called after each step (a worker of several devices reports to its parent through it)."""
  check_settings(interval, batch_size, decode_workers)
  done = resume_point(narrator.settings, out, interval)
  if batch_size is None:
    batch_size = narrator.auto_batch_size()
    log.info("batch size %d (from the device's free memory)", batch_size)
  todo = [(vid, path) for vid, path in videos if vid not in done]
  failures = FailureLog(failures_path(out))
  failures.clear(done)
  writer = VideoWriter(out, narrator, interval, failures)
  total = expected_frames(todo, interval) if progress else 0
  bar = tqdm(total=total, unit="frame", desc="narrate", disable=not progress, dynamic_ncols=True)
  source = FrameSource(todo, interval, decode_workers, queue_size=4 * batch_size)
  captioner = Captioner(narrator)
  started, frames = time.time(), 0
  at_cap_before = narrator.captions_at_cap

  def report(result) -> None:
    """Hands a captioned batch to the writer; updates progress."""
    nonlocal frames
    if result is None:
      return
    writer.captioned(*result)
    frames += len(result[0])
    bar.update(len(result[0]))
    bar.set_postfix(videos=writer.written, failed=writer.failed)
    if on_progress is not None:
      on_progress(len(result[0]), writer.written, writer.failed)

  try:
    _batch_frames(source, writer, captioner, batch_size, report)
  finally:
    source.close()
    captioner.close()
    bar.close()
    writer.close()
  seconds = time.time() - started
  at_cap = narrator.captions_at_cap - at_cap_before
  report_cap(at_cap, frames, narrator.settings.max_new_tokens)
  return {"out": out, "videos_written": writer.written, "videos_failed": writer.failed,
          "videos_skipped_as_done": len(videos) - len(todo), "frames": frames,
          "captions_at_cap": at_cap, "max_new_tokens": narrator.settings.max_new_tokens,
          "batch_size": batch_size, "seconds": round(seconds, 2),
          "frames_per_second": round(frames / max(seconds, 1e-9), 3)}


def report_cap(at_cap: int, captions: int, cap: int) -> None:
  """Logs how many captions reached the cap on new tokens (they may be cut short)."""
  if at_cap:
    log.warning("%d of %d captions reached the cap of %d new tokens and may be cut short; a "
                "larger --max-new-tokens lets them end", at_cap, captions, cap)
  else:
    log.info("%d captions, none reached the cap of %d new tokens", captions, cap)


def _batch_frames(source: FrameSource, writer: VideoWriter, captioner: Captioner,
                  batch_size: int, report) -> None:
  """Batching stage: frames of any videos fill batches of `batch_size`; each full batch goes to
  the captioner, whose previous batch comes back captioned."""
  batch = []
  for vid, t, payload in source:
    if t is _END:
      writer.end(vid, payload)
      continue
    writer.add_frame(vid)
    batch.append((vid, t, payload))
    if len(batch) == batch_size:
      report(captioner.submit(batch))
      batch = []
  if batch:
    report(captioner.submit(batch))
  report(captioner.drain())
  writer.flush()

