"""VSLNet's Charades-STA I3D recipe, from decoded 24 fps uint8 RGB frames to window clips.

Per frame: when the short side is below 226, a bilinear resize by 226 / short side (OpenCV's
`cv2.resize(fx=fy=scale)`, reproduced bit for bit); then a centre crop to 224 x 224 with
round-half-even offsets. Per video: windows of 24 frames with a hop of 24, the last one moved back
to end at frame N - 1 (which is never used). Pixels v become float32(2 * (v / 255) - 1), computed
in float64 as the recipe does (a float32 computation moves 128 of the 256 values by one ulp).
"""

import numpy as np

from tea_jax.errors import InputError

FPS = 24
WINDOW = 24
CROP = 224
MIN_SHORT_SIDE = 226
# OpenCV's bilinear weights are 11-bit fixed point.
_COEF_BITS = 11
# uint8 pixel -> network input, as the recipe computes it: (v / 255.) * 2 - 1 in float64, then cast.
PIXEL_VALUES = ((np.arange(256) / 255.) * 2 - 1).astype(np.float32)


def resize_scale(height: int, width: int) -> float | None:
  """The recipe's resize factor 1 + (226 - m) / m for a short side m < 226, else None."""
  short = min(height, width)
  if short >= MIN_SHORT_SIDE:
    return None
  return 1 + (MIN_SHORT_SIDE - short) / short


def _taps(n_src: int, n_dst: int, scale: float, clamp: bool):
  """Source indices and 11-bit weights of OpenCV's INTER_LINEAR along one axis.

  OpenCV maps destination d to source (d + 0.5) / scale - 0.5 in float32; along x it clamps that
  position into the image (weight 0 on the outer tap), along y it only clamps the row indices."""
  pos = ((np.arange(n_dst) + 0.5) * (1.0 / scale) - 0.5).astype(np.float32)
  first = np.floor(pos).astype(np.int64)
  frac = (pos - first).astype(np.float32)
  if clamp:
    before, after = first < 0, first >= n_src - 1
    frac[before | after] = 0
    first[before], first[after] = 0, n_src - 1
  one = np.float32(1 << _COEF_BITS)
  w0 = np.rint((np.float32(1) - frac) * one).astype(np.int64)
  w1 = np.rint(frac * one).astype(np.int64)
  return np.clip(first, 0, n_src - 1), np.clip(first + 1, 0, n_src - 1), w0, w1


def resize_short_side(frame: np.ndarray) -> np.ndarray:
  """(H, W, 3) uint8 -> the recipe's resize: short side about 226 when it is below 226, else
  unchanged. Output size round-half-even(side * scale), like cv2.resize with dsize (0, 0)."""
  height, width = frame.shape[:2]
  scale = resize_scale(height, width)
  if scale is None:
    return frame
  out_h, out_w = int(np.rint(height * scale)), int(np.rint(width * scale))
  x0, x1, a0, a1 = _taps(width, out_w, scale, clamp=True)
  y0, y1, b0, b1 = _taps(height, out_h, scale, clamp=False)
  pixels = frame.astype(np.int64)
  rows = pixels[:, x0] * a0[None, :, None] + pixels[:, x1] * a1[None, :, None]  # (H, W', 3)
  b0, b1 = b0[:, None, None], b1[:, None, None]
  # OpenCV's vectorised vertical pass: 16-bit high products, then a rounding shift by 2.
  out = (((b0 * (rows[y0] >> 4)) >> 16) + ((b1 * (rows[y1] >> 4)) >> 16) + 2) >> 2
  return np.clip(out, 0, 255).astype(np.uint8)


def crop_offsets(height: int, width: int) -> tuple[int, int]:
  """(top, left) of the centre 224 crop: round-half-even((side - 224) / 2), as np.round does."""
  if min(height, width) < CROP:
    raise InputError(f"frame {height}x{width} is smaller than the {CROP}x{CROP} crop")
  return int(np.round((height - CROP) / 2)), int(np.round((width - CROP) / 2))


def prepare_frame(frame: np.ndarray) -> np.ndarray:
  """One decoded (H, W, 3) uint8 RGB frame -> the (224, 224, 3) uint8 crop the network sees."""
  if frame.dtype != np.uint8 or frame.ndim != 3 or frame.shape[2] != 3:
    raise InputError(f"expected an (H, W, 3) uint8 RGB frame, got {frame.dtype} {frame.shape}")
  frame = resize_short_side(frame)
  top, left = crop_offsets(*frame.shape[:2])
  return np.ascontiguousarray(frame[top:top + CROP, left:left + CROP])


def prepare_clip(frames) -> np.ndarray:
  """Decoded frames ((N, H, W, 3) uint8 array or any iterable of frames) -> (N, 224, 224, 3)
  uint8, frame by frame, so that a decoder's full-size frames need not all be held at once."""
  crops, previous, crop = [], None, None
  for frame in frames:
    if frame is not previous:  # a decoder repeating a frame hands the same array again
      previous, crop = frame, prepare_frame(np.asarray(frame))
    crops.append(crop)
  if not crops:
    return np.zeros((0, CROP, CROP, 3), np.uint8)
  return np.stack(crops)


def window_bounds(num_frames: int) -> list[tuple[int, int]]:
  """[start, end) of each window of a video of `num_frames` frames.

  range(0, N, 24) starts; end = min(N - 1, start + 24); a window shorter than 24 is moved back to
  start at max(0, end - 24). So N = 60 gives [0, 24), [24, 48), [35, 59); N = 24k + 1 repeats the
  window before; N <= 24 gives one window [0, N - 1)."""
  bounds = []
  for start in range(0, num_frames, WINDOW):
    end = min(num_frames - 1, start + WINDOW)
    if end - start < WINDOW:
      start = max(0, end - WINDOW)
    bounds.append((start, end))
  return bounds


def rows_per_window(length: int) -> int:
  """Feature rows of a window of `length` frames: ceil(L / 8) - 1 (2 for L = 17..24)."""
  return -(-length // 8) - 1


def check_length(num_frames: int, name: str = "video") -> None:
  """Raises ValueError naming `name` when its windows would be too short for the network (a video
  of N <= 24 frames has one window of N - 1 frames, and a window needs more than 8)."""
  shortest = min(end - start for start, end in window_bounds(num_frames)) if num_frames else 0
  if rows_per_window(shortest) < 1:
    raise InputError(f"{name}: {num_frames} frames at {FPS} fps is too short for I3D features "
                     f"(needs at least 10 frames, a window of 9)")
