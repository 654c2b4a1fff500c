"""Moments without training: a query's relevance curve over the snippets and the segment search
over it (docs/design.md section 21).

The TEA paper names the train-free paradigm as its next step. The records already hold what a
train-free retriever needs: each snippet's narrative row (the mean GloVe vector of its captions,
section 1) and each query's word ids with their GloVe rows. The relevance of snippet k to a query
is the cosine of the query's mean word vector and the narrative row k. The segment search is
TFVTG's (Zheng et al., ECCV 2024) "static + dynamic" rule, written here for one curve in numpy:

  static    windows of lengths step, 2 step, ... (at most max_fraction of the video) score the mean
            relevance inside minus the mean relevance of the relevant snippets outside; the best
            windows survive temporal NMS;
  dynamic   a window's start moves back to where the (smoothed) relevance began to rise towards
            it, and its end stays: events begin where the curve climbs.

Everything here is numpy over one query at a time (at most 128 snippets, a few hundred windows):
no jit and no device, so a benchmark is evaluated on a CPU in seconds. The encoders that give other
curves (a transformers text encoder, BLIP-2 frame scores) run in tea_apps/trainfree_scores.py,
which may import torch; this module never does, and only reads their curves from a file.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os

import ml_collections
import numpy as np

from tea_jax import config_checks, metrics
from tea_jax.errors import ConfigError, InputError


# The config variant (configs/common.py: VARIANTS) whose model is this retriever.
VARIANT = "trainfree"


def is_trainfree(config) -> bool:
  """Whether an experiment config (or a workdir's config.json) is the train-free retriever."""
  return config.get("variant") == VARIANT


@dataclasses.dataclass(frozen=True)
class SearchSettings:
  """The retriever's few settings, the config's `trainfree` section: the segment search's
  hyper-parameters and the weights of the relevance curves."""

  # Snippets whose normalised relevance is at most this are irrelevant: they score 0 and leave the
  # "outside" mean (TFVTG's 0.2 on BLIP-2 cosines).
  threshold: float = 0.2
  # Window lengths are multiples of this share of the video (at least one snippet): TFVTG's stride
  # of 20 frames at 3 fps is about 0.2 of a 30-second Charades video.
  window_fraction: float = 0.2
  # Longest window, as a share of the video (TFVTG's max_stride_factor for Charades-STA).
  max_fraction: float = 0.5
  # A smoothed rise larger than this (over one, two or three snippets) continues a rising edge.
  rise_threshold: float = 5e-4
  # Width of the Gaussian that smooths the curve before its rises are measured.
  sigma: float = 1.0
  # Windows whose IoU with a better one exceeds this are dropped (TFVTG: 0.3).
  nms_iou: float = 0.3
  # Weights of the relevance curves, combined as the weighted mean of each normalised curve:
  # the cosine of mean GloVe vectors (from the records), and the curves of `scores`, a JSON lines
  # file (relative to data.root) that tea_apps/trainfree_scores.py writes with a transformers
  # text encoder ("text") and BLIP-2's frame scores ("frames").
  glove_weight: float = 1.0
  text_weight: float = 0.0
  frames_weight: float = 0.0
  scores: str = ""

  @property
  def weights(self) -> dict[str, float]:
    """{curve name: weight} of the curves that take part (positive weight)."""
    named = {"glove": self.glove_weight, "text": self.text_weight, "frames": self.frames_weight}
    return {k: w for k, w in named.items() if w > 0}

  def __post_init__(self):
    config_checks.check_fields(dataclasses.asdict(self), config_checks.TRAINFREE_RULES,
                               "config.trainfree")
    if not self.weights:
      raise ConfigError("config.trainfree: glove_weight, text_weight and frames_weight are all 0: "
                        "give at least one curve a positive weight")
    if (self.text_weight or self.frames_weight) and not self.scores:
      raise ConfigError("config.trainfree.text_weight / frames_weight need trainfree.scores (the "
                        "curves file of python -m tea_apps.trainfree_scores)")

  @classmethod
  def from_config(cls, section) -> "SearchSettings":
    """The settings of a config's `trainfree` section (absent fields keep their defaults)."""
    fields = {f.name for f in dataclasses.fields(cls)}
    return cls(**{k: section[k] for k in fields if k in section})


def trainfree_defaults() -> ml_collections.ConfigDict:
  """SearchSettings' defaults as the ConfigDict that experiment configs hold under `trainfree`
  (each field is described where SearchSettings declares it)."""
  return ml_collections.ConfigDict(dataclasses.asdict(SearchSettings()))


@dataclasses.dataclass(frozen=True)
class Segment:
  """A moment on the snippet grid: snippets `start`..`end` (inclusive, as the trained models'
  decoded spans), the static window's own start `window_start`, and its static `score`."""

  start: int
  end: int
  score: float
  window_start: int


# ---------------------------------------------------------------------------------------------
# Relevance


def mean_word_vector(word_ids: np.ndarray, table: np.ndarray) -> np.ndarray:
  """The query's mean GloVe vector from its vocabulary ids: `table` holds the rows of ids 2..
  (the records' word_vectors.npy); PAD (0) and UNK (1) have no vector and are left out, as the
  narratives' encoder leaves out words without one. Zeros when no word has a vector."""
  ids = np.asarray(word_ids, np.int64)
  ids = ids[ids >= 2] - 2
  if not len(ids):
    return np.zeros(table.shape[1], np.float32)
  return table[ids].mean(axis=0)


def cosine_relevance(query: np.ndarray, rows: np.ndarray) -> np.ndarray:
  """(L,) cosine of `query` (D,) with each row of `rows` (L, D); 0 where either is zero."""
  query = np.asarray(query, np.float64)
  rows = np.asarray(rows, np.float64)
  norms = np.linalg.norm(rows, axis=1) * np.linalg.norm(query)
  dots = rows @ query
  return np.divide(dots, norms, out=np.zeros_like(dots), where=norms > 0)


def normalise(curve: np.ndarray) -> np.ndarray:
  """The curve rescaled to [0, 1] (min to 0, max to 1), so that one threshold fits the cosines of
  any encoder (GloVe means sit higher than BLIP-2's); a flat curve becomes zeros."""
  curve = np.asarray(curve, np.float64)
  low, high = curve.min(), curve.max()
  if high - low <= 1e-12:
    return np.zeros_like(curve)
  return (curve - low) / (high - low)


def read_curves(path: str) -> dict[tuple[str, int], dict[str, list[float]]]:
  """{(split, pair_index): {curve name: per-snippet values}} of a file of precomputed curves, one
  JSON object per line with "split", "pair_index" and "curves" (tea_apps/trainfree_scores.py)."""
  if not os.path.isfile(path):
    raise InputError(f"trainfree.scores: no file {path!r} (python -m tea_apps.trainfree_scores "
                     f"writes it)")
  out = {}
  with open(path, encoding="utf-8") as f:
    for number, line in enumerate(f, start=1):
      if not line.strip():
        continue
      try:
        row = json.loads(line)
        out[(str(row["split"]), int(row["pair_index"]))] = dict(row["curves"])
      except (ValueError, KeyError, TypeError):
        raise InputError(f"{path}:{number}: not a curves line (split, pair_index, curves)") \
            from None
  return out


def pair_curves(settings: SearchSettings, glove: np.ndarray | None, stored: dict | None,
                where: str, snippets: int) -> tuple[list[np.ndarray], list[float]]:
  """The curves of one pair that take part, with their weights: the GloVe cosine `glove`, and
  the named curves of `stored` (its line of the scores file), each of `snippets` values."""
  curves, weights = [], []
  for name, weight in settings.weights.items():
    if name == "glove":
      curve = glove
    else:
      if stored is None or name not in stored:
        raise InputError(f"trainfree.scores has no {name!r} curve for {where}")
      curve = np.asarray(stored[name], np.float64)
      if curve.shape != (snippets,):
        raise InputError(f"trainfree.scores: the {name!r} curve of {where} has {curve.size} "
                         f"values, the records' video {snippets} snippets")
    curves.append(curve)
    weights.append(weight)
  return curves, weights


def combine(curves: list[np.ndarray], weights: list[float]) -> np.ndarray:
  """The weighted mean of normalised curves of one video (narratives, frames, ...)."""
  if len(curves) != len(weights) or not curves or sum(weights) <= 0:
    raise ConfigError(f"trainfree: {len(curves)} relevance curves with weights {weights}: "
                      f"give one positive-sum weight per curve")
  total = sum(w * normalise(c) for c, w in zip(curves, weights))
  return total / sum(weights)


# ---------------------------------------------------------------------------------------------
# Segment search


def window_lengths(snippets: int, settings: SearchSettings) -> list[int]:
  """The static windows' lengths: multiples of the step up to max_fraction of the video; the
  step is window_fraction of it (at least 1, at most half the video, as TFVTG caps its stride)."""
  step = max(1, round(settings.window_fraction * snippets))
  step = min(step, max(1, snippets // 2))
  longest = max(step, min(snippets, int(settings.max_fraction * snippets)))
  return list(range(step, longest + 1, step))


def static_scores(relevance: np.ndarray, settings: SearchSettings
                  ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  """(starts, lengths, scores) of every static window, lengths ascending then starts ascending.

  A window's score is the mean relevance inside it (irrelevant snippets counting 0) minus the
  mean relevance of the relevant snippets outside it (0 when none is left outside)."""
  relevant = relevance > settings.threshold  # (L,)
  kept = np.where(relevant, relevance, 0.0)
  sums = np.concatenate([[0.0], np.cumsum(kept)])
  counts = np.concatenate([[0], np.cumsum(relevant)])
  starts, lengths, scores = [], [], []
  for length in window_lengths(len(relevance), settings):
    first = np.arange(len(relevance) - length + 1)
    inner = sums[first + length] - sums[first]
    outer_count = counts[-1] - (counts[first + length] - counts[first])
    outer = np.divide(sums[-1] - inner, outer_count, out=np.zeros_like(inner),
                      where=outer_count > 0)
    starts.append(first)
    lengths.append(np.full(len(first), length))
    scores.append(inner / length - outer)
  return np.concatenate(starts), np.concatenate(lengths), np.concatenate(scores)


def _gaussian(snippets_step: int, sigma: float) -> np.ndarray:
  """TFVTG's smoothing taps: the normal density at -h..h, h = min(step - 2, 3) // 2 (one tap, of
  weight 1, for steps under 3)."""
  if snippets_step < 3:
    return np.ones(1)
  half = min(snippets_step - 2, 3) // 2
  x = np.arange(-half, half + 1, dtype=np.float64)
  return np.exp(-x ** 2 / (2 * sigma ** 2)) / (math.sqrt(2 * math.pi) * sigma)


def rise_starts(relevance: np.ndarray, settings: SearchSettings) -> np.ndarray:
  """(L,) for each snippet i, where the rising edge through i began: i itself when the curve does
  not rise at i, else the last snippet before it where it did not (0 if it rose from the start).

  The rise at i is s[i + 1] - s[i] of the Gaussian-smoothed curve s (defined where both taps fit,
  0 elsewhere and on irrelevant snippets); i rises when the rise over the last one, two or three
  snippets, as 3 r_i, 2 r_i + r_(i-1) or r_i + r_(i-1) + r_(i-2), exceeds rise_threshold."""
  snippets = len(relevance)
  relevant = relevance > settings.threshold
  kept = np.where(relevant, relevance, 0.0)
  step = window_lengths(snippets, settings)[0]
  taps = _gaussian(step, settings.sigma)
  half = len(taps) // 2
  smooth = np.convolve(kept, taps[::-1], mode="valid")  # centred at half .. L - 1 - half
  rise = np.zeros(snippets)
  if len(smooth) > 1:
    rise[half:half + len(smooth) - 1] = np.diff(smooth)
  rise *= relevant
  starts = np.zeros(snippets, np.int64)
  run_start, r1, r2 = 0, 0.0, 0.0
  for i in range(snippets):
    r0 = rise[i]
    if not max(3 * r0, 2 * r0 + r1, r0 + r1 + r2) > settings.rise_threshold:
      run_start = i
    starts[i] = run_start
    r1, r2 = r0, r1
  return starts


def search(relevance: np.ndarray, settings: SearchSettings, top_k: int = 1) -> list[Segment]:
  """The `top_k` best segments of a (v_len,) relevance curve (any scale: it is normalised first),
  best first. A curve with no relevant snippet gives the whole video with score 0."""
  curve = normalise(relevance)
  snippets = len(curve)
  if snippets == 0:
    raise ValueError("an empty relevance curve")
  if not (curve > settings.threshold).any():
    return [Segment(0, snippets - 1, 0.0, 0)]
  starts, lengths, scores = static_scores(curve, settings)
  kept = metrics.nms(starts, starts + lengths, scores, settings.nms_iou, top_k)
  rise = rise_starts(curve, settings)
  return [Segment(int(rise[starts[k]]), int(starts[k] + lengths[k] - 1), float(scores[k]),
                  int(starts[k])) for k in kept]
