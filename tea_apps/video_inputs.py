"""From a video file to what a model reads, each expensive phase cached: I3D features (VSLNet's
recipe, data_prep.extract_features' code path), MLLM narration (data_prep.narrate's pipeline), and a
strip of frames for the timeline plot.

The cache is one folder per video: `<video file>.tea_cache/` beside the video, or
`<--cache DIR>/<video file name>.tea_cache/`. Each result is stored under a key of everything it
depends on (the video's path, size and modification time; the I3D weights file's; the narrator
model directory's files; the narration interval and generation settings), so that a changed input
is recomputed and an unchanged one is read back: a second question about the same video costs only
the model's forward pass. `I3D` and `Narrator` load their weights on first use and keep them, so a
Predictor (tea_apps/api.py) asked about many videos loads each once.
"""

import dataclasses
import hashlib
import json
import logging
import os
import time

import numpy as np

from data_prep.extract_features import decode_clip
from data_prep.frames import UnreadableVideo, duration_seconds, sample_frames
from data_prep.narration.settings import narration_settings
from data_prep.narratives import read_narratives
from tea_jax.errors import InputError
from tea_jax.files import atomic_write, write_json
from tea_jax.i3d import Extractor, load_weights, recipe
from tea_jax.i3d.model import FEATURE_DIM as I3D_DIM

log = logging.getLogger(__name__)

# Part of the features' key: a change of the recipe (decoding rate, crop, windows) must not read
# features computed the old way.
I3D_RECIPE = "vslnet-i3d-24fps/1"
CACHE_SUFFIX = ".tea_cache"


def file_signature(path: str) -> dict:
  """What identifies a file's contents cheaply: absolute path, size, modification time (ns)."""
  stat = os.stat(path)
  return {"path": os.path.abspath(path), "size": stat.st_size, "mtime_ns": stat.st_mtime_ns}


def dir_signature(path: str) -> dict:
  """A model directory's signature: the signature of every file below it (weights, configs,
  tokenizer), so that replacing any of them changes the key."""
  files = []
  for folder, _, names in sorted(os.walk(path)):
    for name in sorted(names):
      full = os.path.join(folder, name)
      stat = os.stat(full)
      files.append([os.path.relpath(full, path), stat.st_size, stat.st_mtime_ns])
  return {"path": os.path.abspath(path), "files": files}


def cache_key(*parts) -> str:
  """16 hex digits of the SHA-256 of the JSON of `parts`."""
  text = json.dumps(parts, sort_keys=True, separators=(",", ":"))
  return hashlib.sha256(text.encode("utf-8")).hexdigest()[:16]


@dataclasses.dataclass(frozen=True)
class VideoCache:
  """The cache folder of one video."""

  folder: str

  @classmethod
  def for_video(cls, video: str, cache_dir: str | None = None) -> "VideoCache":
    """`<video>.tea_cache/` beside the video, or in `cache_dir`."""
    root = cache_dir if cache_dir else os.path.dirname(os.path.abspath(video))
    return cls(os.path.join(root, os.path.basename(video) + CACHE_SUFFIX))

  def path(self, name: str) -> str:
    """The path of an entry (the folder is made by `ensure`, before the first entry's work)."""
    return os.path.join(self.folder, name)

  def ensure(self) -> None:
    """Makes the folder; one line when it cannot be written (e.g. a read-only video folder)."""
    try:
      os.makedirs(self.folder, exist_ok=True)
      if not os.access(self.folder, os.W_OK):
        raise PermissionError(13, "not writable")
    except OSError as e:
      raise InputError(f"cannot write the cache folder {self.folder} ({e.strerror}): pass "
                       f"--cache DIR") from None


def check_video(video: str) -> None:
  """A missing video is a one-line error before anything is loaded."""
  if not os.path.isfile(video):
    raise FileNotFoundError(f"video not found: {video}")


def video_duration(video: str, num_frames: int) -> float:
  """The file's duration in seconds (its stream or container duration), or, when the file does not
  say, that of its frames at 24 fps."""
  return duration_seconds(video) or num_frames / recipe.FPS


# ---------------------------------------------------------------------------------------------
# I3D features


class I3D:
  """I3D features of video files with one weights file (VSLNet's recipe), the weights loaded on
  first use and kept: a Predictor extracts many videos."""

  def __init__(self, weights: str, batch_size: int = 8, precision: str = "highest"):
    self.weights, self.batch_size, self.precision = weights, batch_size, precision
    self._loaded = None  # (num_classes, variables)

  def features(self, video: str, cache: VideoCache) -> tuple[np.ndarray, float]:
    """(T, 1024) I3D features of `video` and its duration in seconds, read from the cache or
    computed (and cached) as data_prep.extract_features computes them."""
    check_video(video)
    if not os.path.isfile(self.weights):
      raise FileNotFoundError(f"I3D weights not found: {self.weights}")
    key = cache_key("i3d", I3D_RECIPE, file_signature(video), file_signature(self.weights),
                    self.precision)
    features_path, meta_path = cache.path(f"i3d-{key}.npy"), cache.path(f"i3d-{key}.json")
    if os.path.isfile(features_path) and os.path.isfile(meta_path):
      with open(meta_path, encoding="utf-8") as f:
        return np.load(features_path), float(json.load(f)["duration"])
    clip = _decode(video)
    cache.ensure()
    features = self._run(clip, video)
    duration = video_duration(video, len(clip))
    atomic_write(features_path, lambda f: np.save(f, features), binary=True)
    # Written last: its presence marks a complete entry.
    write_json(meta_path, {"duration": duration, "frames": len(clip), "rows": len(features),
                           "recipe": I3D_RECIPE, "video": file_signature(video),
                           "weights": file_signature(self.weights),
                           "precision": self.precision})
    return features, duration

  def _run(self, clip: np.ndarray, video: str) -> np.ndarray:
    """(T, 1024) features of a prepared clip; the jitted batch is no larger than the video's
    number of windows (a short video would otherwise pay for blank padding windows)."""
    if self._loaded is None:
      self._loaded = load_weights(self.weights)
    num_classes, variables = self._loaded
    windows = len(set(recipe.window_bounds(len(clip))))
    extractor = Extractor(variables, num_classes,
                          batch_size=max(1, min(self.batch_size, windows)),
                          precision=None if self.precision == "default" else "highest")
    started = time.time()
    log.info("I3D features of %s: %d windows of 24 frames ...", video, windows)
    (_, features), = extractor.stream([(video, clip)])
    log.info("I3D features of %s: %s in %.1f s", video, features.shape, time.time() - started)
    return features


def _decode(video: str) -> np.ndarray:
  """The prepared (N, 224, 224, 3) clip (data_prep.extract_features.decode_clip); a video that
  cannot be decoded or is too short is an InputError naming it."""
  started = time.time()
  try:
    clip = decode_clip(video)
  except (UnreadableVideo, ValueError) as e:
    raise InputError(str(e)) from None
  log.info("decoded %s: %d frames at 24 fps in %.1f s", video, len(clip), time.time() - started)
  return clip


# ---------------------------------------------------------------------------------------------
# Narration


@dataclasses.dataclass(frozen=True)
class NarratorSettings:
  """How the video is narrated (TEA's video narrator): a local model directory and its settings
  (None: the backend's default, as the narrate command takes it)."""

  model_dir: str
  backend: str = "llava"
  interval: float = 1.0
  max_new_tokens: int | None = None
  batch_size: int = 16
  device: str = "auto"
  preprocess: str | None = None
  template: str | None = None

  def narration(self):
    """The settings that change the captions (data_prep.narration.settings): the exact prompt,
    preprocessing, template and token cap."""
    return narration_settings(self.backend, self.model_dir, preprocess=self.preprocess,
                              template=self.template, max_new_tokens=self.max_new_tokens)

  def key_parts(self) -> dict:
    """What the captions depend on (not the batch size or the device)."""
    return {"model": dir_signature(self.model_dir), "interval": self.interval,
            **self.narration().key_parts()}


class Narrator:
  """A video narrator with given settings (data_prep.narrate's pipeline), the model loaded on first
  use and kept: a Predictor narrates many videos."""

  def __init__(self, settings: NarratorSettings):
    self.settings = settings
    self._narrator = None

  def narratives(self, video: str, cache: VideoCache,
                 progress: bool = True) -> list[tuple[float, str]]:
    """[(t, caption)] of `video`, one frame every `settings.interval` seconds, read from the cache
    or narrated (and cached)."""
    settings = self.settings
    check_video(video)
    if not os.path.isdir(settings.model_dir):
      raise FileNotFoundError(f"narrator model directory not found: {settings.model_dir}")
    if not settings.interval > 0:
      raise InputError(f"--narrator-interval must be positive, got {settings.interval}")
    key = cache_key("narration", file_signature(video), settings.key_parts())
    out = cache.path(f"narration-{key}.jsonl")
    video_id = os.path.basename(video)
    cached = _cached_narration(out, video_id)
    if cached is not None:
      return cached
    cache.ensure()
    self._narrate(video, video_id, out, progress)
    cached = _cached_narration(out, video_id)
    if cached is None:
      raise InputError(f"{video}: narration failed (the reason is in {out}.failures.jsonl)")
    return cached

  def _load(self):
    """The narrator model (data_prep.narration.narrators), loaded once."""
    if self._narrator is None:
      # pylint: disable=import-outside-toplevel
      from data_prep.narration.narrators import BACKENDS
      settings = self.settings
      if settings.backend not in BACKENDS:
        raise InputError(f"unknown narrator backend {settings.backend!r}: expected one of "
                         f"{sorted(BACKENDS)}")
      chosen = settings.narration()
      try:
        self._narrator = BACKENDS[settings.backend](
            settings.model_dir, settings.device, "auto", chosen.max_new_tokens,
            preprocess=chosen.preprocess, template=chosen.template)
      except (OSError, RuntimeError, ValueError) as e:
        raise InputError(f"--narrator-model: {e}") from None
    return self._narrator

  def _narrate(self, video: str, video_id: str, out: str, progress: bool) -> None:
    """Runs the narrate pipeline on this one video (its output file is the cache entry: written
    line by line, fsync'ed, resumable)."""
    from data_prep.narration.pipeline import narrate  # pylint: disable=import-outside-toplevel
    narrator = self._load()
    started = time.time()
    narrate(narrator, [(video_id, video)], out, interval=self.settings.interval,
            batch_size=self.settings.batch_size, progress=progress)
    log.info("narrated %s in %.1f s", video, time.time() - started)


def _cached_narration(path: str, video_id: str) -> list[tuple[float, str]] | None:
  """The video's narratives in a narration cache file, or None when it has none yet."""
  if not os.path.isfile(path):
    return None
  narratives, _ = read_narratives(path)
  return narratives.get(video_id)


# ---------------------------------------------------------------------------------------------
# Frames for the plot


def frame_strip(video: str, duration: float, count: int = 8,
                height: int = 120) -> list[tuple[float, np.ndarray]]:
  """[(t, (h, w, 3) uint8 thumbnail)] of `count` frames evenly spread over the video (the first
  frame at or after each multiple of duration / count), `height` pixels high."""
  frames = []
  try:
    for t, image in sample_frames(video, max(duration / count, 1e-3)):
      if len(frames) == count:
        break
      width = max(1, round(image.width * height / image.height))
      frames.append((t, np.asarray(image.resize((width, height)))))
  except UnreadableVideo as e:
    raise InputError(str(e)) from None
  return frames
