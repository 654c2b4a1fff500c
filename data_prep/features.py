"""Snippet features: a folder of `<video_id>.npy` (optionally with feature_shapes.json) or one HDF5
file with a dataset per video id; and EMB's reduction to at most 128 snippets (docs/design.md
section 1)."""

import json
import os

import numpy as np

from tea_jax.errors import ConfigError, InputError


class MissingFeatures(InputError):
  """A video has no features in the source (build_records counts such videos as missing)."""


class FeatureSource:
  """Reads (T, D) float32 snippet features by video id from a .npy folder or an HDF5 file."""

  def __init__(self, path: str):
    self.path = path
    self._h5 = None
    self.lengths: dict[str, int] | None = None
    if os.path.isdir(path):
      shapes = os.path.join(path, "feature_shapes.json")
      if os.path.isfile(shapes):
        with open(shapes, encoding="utf-8") as f:
          self.lengths = {str(k): int(v if not isinstance(v, list) else v[0])
                          for k, v in json.load(f).items()}
    elif os.path.isfile(path) and path.endswith((".h5", ".hdf5")):
      import h5py  # pylint: disable=import-outside-toplevel
      try:
        self._h5 = h5py.File(path, "r")
      except OSError as e:  # not HDF5, truncated: h5py's message does not name the file
        raise InputError(f"cannot open features {path}: {e}") from e
    else:
      raise FileNotFoundError(f"features not found: {path} (expected a folder of <vid>.npy or an "
                              f".h5/.hdf5 file)")

  def __contains__(self, video_id: str) -> bool:
    if self._h5 is not None:
      return video_id in self._h5
    return os.path.isfile(os.path.join(self.path, f"{video_id}.npy"))

  def get(self, video_id: str) -> np.ndarray:
    """The (T, D) features of `video_id`; MissingFeatures or ValueError naming the file."""
    if self._h5 is not None:
      if video_id not in self._h5:
        raise MissingFeatures(f"no dataset {video_id!r} in {self.path}")
      where = f"{self.path}:{video_id}"
      try:
        feats = np.asarray(self._h5[video_id], dtype=np.float32)
      except (OSError, TypeError, ValueError) as e:  # unreadable or non-numeric dataset
        raise InputError(f"cannot read features {where}: {e}") from e
    else:
      where = os.path.join(self.path, f"{video_id}.npy")
      if not os.path.isfile(where):
        raise MissingFeatures(f"no features for video {video_id!r}: {where} does not exist")
      try:
        feats = np.load(where).astype(np.float32)
      except (ValueError, OSError, EOFError) as e:  # EOFError: an empty or cut .npy file
        raise InputError(f"cannot read features {where}: {e}") from e
    if feats.ndim != 2 or feats.shape[0] == 0:
      raise InputError(f"features {where} have shape {feats.shape}, expected (T > 0, D)")
    if not np.all(np.isfinite(feats)):
      raise InputError(f"features {where} contain NaN or inf")
    if self.lengths is not None and video_id in self.lengths \
        and self.lengths[video_id] != feats.shape[0]:
      raise InputError(f"features {where} have {feats.shape[0]} rows but feature_shapes.json "
                       f"says {self.lengths[video_id]}")
    return feats

  def close(self):
    if self._h5 is not None:
      self._h5.close()


def reduce_snippets(feats: np.ndarray, max_snippets: int = 128, mode: str = "mean") -> np.ndarray:
  """T > max_snippets rows -> max_snippets bins (EMB: edges = round-half-even(arange(N+1) / N * T),
  clipped to T - 1; bin i pools feats[edges[i]:edges[i+1]], or is the single row feats[edges[i]]
  when that slice is empty). mode "mean" is EMB's code, "max" the TEA paper's text."""
  t = feats.shape[0]
  if t <= max_snippets:
    return feats.astype(np.float32)
  if mode not in ("mean", "max"):
    raise ConfigError(f"unknown pooling {mode!r}: expected 'mean' or 'max'")
  edges = np.round(np.arange(max_snippets + 1, dtype=np.float64) / max_snippets * t).astype(int)
  edges = np.minimum(edges, t - 1)
  out = np.empty((max_snippets, feats.shape[1]), np.float32)
  pool = np.mean if mode == "mean" else np.max
  for i in range(max_snippets):
    lo, hi = edges[i], edges[i + 1]
    out[i] = pool(feats[lo:hi], axis=0) if hi > lo else feats[lo]
  return out
