"""Small generated videos for tests and benchmarks (no video files ship with the project)."""

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
