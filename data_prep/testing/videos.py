"""Small generated videos for tests and benchmarks (no video files ship with the project)."""

from fractions import Fraction

import av
import numpy as np


def write_test_video(path: str, seconds: int, fps: int = 10, size: tuple[int, int] = (64, 48),
                     codec: str = "mpeg4") -> None:
  """Writes a small synthetic video whose frame brightness encodes the second (for tests)."""
  with av.open(path, "w") as container:
    stream = container.add_stream(codec, rate=fps)
    stream.width, stream.height = size
    stream.pix_fmt = "yuv420p"
    for i in range(seconds * fps):
      level = int(255 * (i // fps) / max(1, seconds - 1))
      image = np.full((size[1], size[0], 3), level, np.uint8)
      for packet in stream.encode(av.VideoFrame.from_ndarray(image, format="rgb24")):
        container.mux(packet)
    for packet in stream.encode():
      container.mux(packet)


INDEX_BITS = 8


def write_indexed_video(path: str, num_frames: int, fps: int | float = 10,
                        size: tuple[int, int] = (64, 48), codec: str = "mpeg4",
                        time_base=None) -> None:
  """Writes a video whose frame i shows i in binary: INDEX_BITS vertical stripes, stripe b white
  when bit b of i is set (survives lossy coding; read back with `frame_index`)."""
  if num_frames > 2 ** INDEX_BITS:
    raise ValueError(f"at most {2 ** INDEX_BITS} frames can be indexed, got {num_frames}")
  width, height = size
  with av.open(path, "w") as container:
    stream = container.add_stream(codec, rate=Fraction(fps).limit_denominator(1001))
    stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
    if time_base is not None:
      stream.time_base = time_base
    stripe = np.arange(width) * INDEX_BITS // width  # (W,) the bit each column shows
    for i in range(num_frames):
      bits = (i >> stripe) & 1
      image = np.broadcast_to((bits * 255).astype(np.uint8)[None, :, None], (height, width, 3))
      frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(image), format="rgb24")
      for packet in stream.encode(frame):
        container.mux(packet)
    for packet in stream.encode():
      container.mux(packet)


def frame_index(frame: np.ndarray) -> int:
  """The index `write_indexed_video` drew into an (H, W, 3) uint8 frame."""
  width = frame.shape[1]
  stripe = np.arange(width) * INDEX_BITS // width
  levels = frame.astype(np.float32).mean(axis=(0, 2))  # (W,)
  bits = [levels[stripe == b][1:-1].mean() > 127.5 for b in range(INDEX_BITS)]
  return int(sum(1 << b for b, on in enumerate(bits) if on))


def write_moving_video(path: str, seconds: float, fps: int = 30, size: tuple[int, int] = (480, 270),
                       codec: str = "mpeg4", seed: int = 0) -> None:
  """Writes a video of textured stripes drifting every frame (decoding costs about what a real
  video of that size does; a still image would decode almost for free)."""
  width, height = size
  rng = np.random.default_rng(seed)
  texture = rng.integers(0, 256, (height, 2 * width, 3), dtype=np.uint8)
  texture[:, ::16] = 255
  with av.open(path, "w") as container:
    stream = container.add_stream(codec, rate=fps)
    stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
    stream.bit_rate = 2_000_000
    for i in range(int(round(seconds * fps))):
      shift = (3 * i) % width
      image = np.ascontiguousarray(texture[:, shift:shift + width])
      for packet in stream.encode(av.VideoFrame.from_ndarray(image, format="rgb24")):
        container.mux(packet)
    for packet in stream.encode():
      container.mux(packet)


def write_frames_video(path: str, frames: list[np.ndarray], fps: int = 10) -> None:
  """Writes (H, W, 3) uint8 RGB `frames` losslessly (FFV1 in RGB, a .mkv `path`): every decoded
  pixel is the one drawn, so videos that differ only in some pixels decode that way."""
  height, width = frames[0].shape[:2]
  with av.open(path, "w") as container:
    stream = container.add_stream("ffv1", rate=fps)
    stream.width, stream.height, stream.pix_fmt = width, height, "bgr0"
    for image in frames:
      frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(image), format="rgb24")
      for packet in stream.encode(frame):
        container.mux(packet)
    for packet in stream.encode():
      container.mux(packet)
