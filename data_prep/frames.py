"""Frame sampling with PyAV: one frame every `interval` seconds, each with its true timestamp; or
every frame resampled to a constant rate (ffmpeg's `fps` filter)."""

import math
import os
from fractions import Fraction
from typing import Iterator

import av
import numpy as np
from PIL import Image

from tea_jax.errors import InputError

VIDEO_EXTENSIONS = (".mp4", ".mkv", ".webm", ".avi", ".mov", ".m4v")


class UnreadableVideo(InputError):
  """A video that cannot be opened or decoded (corrupt, empty, no video stream): narration and
  feature extraction record it as a failure and go on with the other videos."""


def find_videos(folder: str) -> dict[str, str]:
  """{video_id: path} for the video files of `folder` (the id is the file name without extension).

  A video id present with several extensions keeps the first in VIDEO_EXTENSIONS order."""
  if not os.path.isdir(folder):
    raise FileNotFoundError(f"video folder not found: {folder}")
  found: dict[str, str] = {}
  by_id: dict[str, list[str]] = {}
  for name in os.listdir(folder):
    stem, ext = os.path.splitext(name)
    if ext.lower() in VIDEO_EXTENSIONS:
      by_id.setdefault(stem, []).append(name)
  for stem in sorted(by_id):
    first = min(by_id[stem], key=lambda n: VIDEO_EXTENSIONS.index(os.path.splitext(n)[1].lower()))
    found[stem] = os.path.join(folder, first)
  return found


def duration_seconds(path: str) -> float:
  """Container or stream duration in seconds (0 when unknown)."""
  try:
    with av.open(path) as container:
      stream = container.streams.video[0]
      if stream.duration is not None and stream.time_base is not None:
        return float(stream.duration * stream.time_base)
      if container.duration is not None:
        return container.duration / av.time_base
  except (av.FFmpegError, IndexError, OSError):
    pass
  return 0.0


def sample_frames(path: str, interval: float = 1.0) -> Iterator[tuple[float, Image.Image]]:
  """Yields (t, RGB image) for the first decoded frame at or after 0, interval, 2 interval, ...

  t is the frame's own presentation time in seconds. Raises UnreadableVideo naming the file when
  the video cannot be opened or yields no frame.
  """
  if interval <= 0:
    raise ValueError(f"interval must be positive, got {interval}")
  try:
    container = av.open(path)
  except (av.FFmpegError, OSError) as e:
    raise UnreadableVideo(f"{path}: cannot open ({e})") from None
  yielded = 0
  try:
    if not container.streams.video:
      raise UnreadableVideo(f"{path}: no video stream")
    stream = container.streams.video[0]
    stream.thread_type = "AUTO"
    start = float(stream.start_time * stream.time_base) if stream.start_time else 0.0
    next_t = 0.0
    try:
      for frame in container.decode(stream):
        if frame.pts is None:
          continue
        t = float(frame.pts * stream.time_base) - start
        if t + 1e-6 < next_t:
          continue
        yield round(t, 6), frame.to_image()
        yielded += 1
        # The next sample: the first multiple of the interval after this frame.
        next_t = (math.floor(t / interval + 1e-6) + 1) * interval
    except av.FFmpegError as e:
      if not yielded:
        raise UnreadableVideo(f"{path}: cannot decode ({e})") from None
      # A video damaged near its end keeps the frames decoded so far.
  finally:
    container.close()
  if not yielded:
    raise UnreadableVideo(f"{path}: no decodable frame")


def _round_half_away(value: Fraction) -> int:
  """Nearest integer, halves away from zero (FFmpeg's AV_ROUND_NEAR_INF)."""
  whole = math.floor(abs(value) + Fraction(1, 2))
  return whole if value >= 0 else -whole


def _frame_duration(frame, stream, previous_pts: int | None) -> int:
  """A frame's duration in stream time base: its own, else 1 / the stream's frame rate, else the
  gap to the frame before it."""
  if getattr(frame, "duration", None):
    return int(frame.duration)
  rate = stream.average_rate or stream.guessed_rate
  if rate:
    return max(1, _round_half_away(1 / (Fraction(rate) * Fraction(stream.time_base))))
  return frame.pts - previous_pts if previous_pts is not None else 0


def frames_at_fps(path: str, fps: int | Fraction = 24) -> Iterator[np.ndarray]:
  """Yields (H, W, 3) uint8 RGB frames at a constant `fps`, chosen as ffmpeg's `fps` filter does
  with its defaults (`ffmpeg -i VIDEO -filter:v fps=fps=24 ...`).

  Timestamps are taken relative to the file's start time (ffmpeg's input offset); each frame
  gets the tick q = round-half-away(t * fps); output tick k, from the first frame's tick up to
  the tick of the end of the last frame (its pts + duration) exclusive, shows the last frame whose
  tick is <= k (frames are repeated or dropped). A repeated frame is the same array object.
  Differences from ffmpeg: frames without a pts are skipped (ffmpeg guesses one), and RGB comes
  from PyAV's conversion of the decoded frame (no JPEG round trip). Raises UnreadableVideo naming
  the file when it cannot be opened or yields no frame.
  """
  try:
    container = av.open(path)
  except (av.FFmpegError, OSError) as e:
    raise UnreadableVideo(f"{path}: cannot open ({e})") from None
  fps, yielded = Fraction(fps), 0
  try:
    if not container.streams.video:
      raise UnreadableVideo(f"{path}: no video stream")
    stream = container.streams.video[0]
    stream.thread_type = "AUTO"
    base = Fraction(stream.time_base)
    # ffmpeg shifts every timestamp by the file's start time (microseconds), rounded to the nearest.
    offset = _round_half_away(-Fraction(container.start_time or 0, av.time_base) / base)
    # held: the frame shown until a later frame's tick comes (converted to RGB only if shown).
    held, rgb, tick, last_pts, end = None, None, None, None, None
    try:
      for frame in container.decode(stream):
        if frame.pts is None:
          continue
        frame_tick = _round_half_away((frame.pts + offset) * base * fps)
        if held is None:
          tick = frame_tick
        while held is not None and frame_tick > tick:
          rgb = held.to_ndarray(format="rgb24") if rgb is None else rgb
          yield rgb
          yielded, tick = yielded + 1, tick + 1
        end = frame.pts + offset + _frame_duration(frame, stream, last_pts)
        held, rgb, last_pts = frame, None, frame.pts
    except av.FFmpegError as e:
      if held is None:
        raise UnreadableVideo(f"{path}: cannot decode ({e})") from None
      # A video damaged near its end keeps the frames decoded so far.
    if held is not None:
      # The last frame lasts until its end, like ffmpeg's end-of-stream timestamp.
      while tick < _round_half_away(end * base * fps):
        rgb = held.to_ndarray(format="rgb24") if rgb is None else rgb
        yield rgb
        yielded, tick = yielded + 1, tick + 1
  finally:
    container.close()
  if not yielded:
    raise UnreadableVideo(f"{path}: no decodable frame")
