"""I3D features of whole videos: `Extractor(...).video_features(frames)` for one video, and
`Extractor.stream` for many (windows of several videos share each jit call).

Both run the same code: frames -> `recipe.prepare_clip` -> windows -> one jitted call per batch of
`batch_size` 24-frame windows (the last batch padded with blank windows, so the program compiles
once) -> two 1024-d rows per window, concatenated in window order. A video of N <= 24 frames has a
single shorter window, run on its own (one compilation per distinct length).
"""

import collections
import functools
from typing import Hashable, Iterable, Iterator

import jax
import jax.numpy as jnp
import numpy as np

from tea_jax.i3d import recipe
from tea_jax.i3d.importer import load_weights
from tea_jax.i3d.model import InceptionI3d


@functools.partial(jax.jit, static_argnums=0)
def _window_features(model: InceptionI3d, variables, windows):
  """(B, L, 224, 224, 3) uint8 windows -> (B, rows, 1024) pooled features."""
  clips = jnp.asarray(recipe.PIXEL_VALUES)[windows]  # the recipe's exact float32 pixel values
  pooled = model.apply(variables, clips, method=InceptionI3d.features)  # (B, rows, 1, 1, 1024)
  return pooled[:, :, 0, 0, :]


class _Video:
  """A video in flight: its clip, one slot per distinct window, and how many are still missing."""

  def __init__(self, key: Hashable, clip: np.ndarray):
    self.key, self.clip = key, clip
    self.bounds = recipe.window_bounds(len(clip))
    self.rows: dict[tuple[int, int], np.ndarray] = {}
    self.missing = len(set(self.bounds))  # N = 24k + 1 repeats its last window: computed once

  def features(self) -> np.ndarray:  # (T, 1024) float32, window-major
    return np.concatenate([self.rows[b] for b in self.bounds]).astype(np.float32)


class Extractor:
  """The VSLNet recipe's I3D features with given weights, `batch_size` windows per jit call."""

  def __init__(self, variables: dict, num_classes: int = 400, batch_size: int = 8,
               precision: str | None = "highest"):
    if batch_size < 1:
      raise ValueError(f"batch_size must be at least 1, got {batch_size}")
    # Full float32 convolutions by default (the reference's numbers); a GPU's default is TF32.
    self.model = InceptionI3d(num_classes, precision=precision)
    self.variables = jax.device_put(variables)
    self.batch_size = batch_size

  @classmethod
  def from_weights(cls, path: str, **kwargs) -> "Extractor":
    """From a PyTorch checkpoint (rgb_charades.pt, rgb_imagenet.pt) or a converted .npz."""
    num_classes, variables = load_weights(path)
    return cls(variables, num_classes, **kwargs)

  def video_features(self, frames) -> np.ndarray:
    """(N, H, W, 3) uint8 RGB frames at 24 fps -> (T, 1024) float32, T = 2 ceil(N / 24) for
    N >= 18 (ValueError for N < 10)."""
    (_, features), = self.stream([("video", recipe.prepare_clip(frames))])
    return features

  def run_windows(self, windows: np.ndarray) -> np.ndarray:
    """(n, L, 224, 224, 3) uint8 windows -> (n, rows, 1024) float32, blocking (batch_size windows
    per call)."""
    chunks = [self._dispatch(windows[i:i + self.batch_size])
              for i in range(0, len(windows), self.batch_size)]
    return np.concatenate([np.asarray(chunk) for chunk in chunks])

  def _dispatch(self, windows: np.ndarray):
    """Starts the jitted call on `windows` padded to batch_size (24-frame windows) and returns the
    device array of the real ones without waiting for it."""
    n = len(windows)
    if windows.shape[1] == recipe.WINDOW and n < self.batch_size:
      blank = np.zeros((self.batch_size - n,) + windows.shape[1:], np.uint8)
      windows = np.concatenate([windows, blank])
    return _window_features(self.model, self.variables, windows)[:n]

  def stream(self, clips: Iterable[tuple[Hashable, np.ndarray]]
             ) -> Iterator[tuple[Hashable, np.ndarray]]:
    """(key, (N, 224, 224, 3) uint8 prepared clip) pairs -> (key, (T, 1024) features), each video
    as soon as its last window is computed. The host gathers the next batch while the device
    computes the current one (one batch in flight)."""
    queue: collections.deque = collections.deque()  # (video, bounds) of 24-frame windows to run
    in_flight = None

    def rotate(jobs: list):
      """Launches `jobs` (if any), then finishes the batch launched before them."""
      nonlocal in_flight
      previous, in_flight = in_flight, (self._launch(jobs) if jobs else None)
      return self._finish(previous) if previous is not None else ()

    for key, clip in clips:
      recipe.check_length(len(clip), str(key))
      video = _Video(key, clip)
      for bounds in dict.fromkeys(video.bounds):
        if bounds[1] - bounds[0] == recipe.WINDOW:
          queue.append((video, bounds))
        else:  # the one short window of a video of N <= 24 frames
          yield from self._finish(self._launch([(video, bounds)]))
      while len(queue) >= self.batch_size:
        yield from rotate([queue.popleft() for _ in range(self.batch_size)])
    yield from rotate(list(queue))
    yield from rotate([])

  def _launch(self, jobs: list) -> tuple[list, object]:
    windows = np.stack([video.clip[start:end] for video, (start, end) in jobs])
    return jobs, self._dispatch(windows)

  @staticmethod
  def _finish(launched) -> Iterator[tuple[Hashable, np.ndarray]]:
    """Waits for a launched batch, files its rows, yields the videos it completes."""
    jobs, rows = launched
    rows = np.asarray(rows)  # (n, rows, 1024)
    for (video, bounds), window_rows in zip(jobs, rows):
      video.rows[bounds] = window_rows
      video.missing -= 1
      if video.missing == 0:
        yield video.key, video.features()
        video.clip = None  # free the frames as soon as the video is done

