"""Frame sampling with PyAV: one frame every `interval` seconds, each with its true timestamp."""

import math
import os
from typing import Iterator

import av
from PIL import Image

VIDEO_EXTENSIONS = (".mp4", ".mkv", ".webm", ".avi", ".mov", ".m4v")


class UnreadableVideo(ValueError):
  """A video that cannot be opened or decoded (corrupt, empty, no video stream)."""


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
