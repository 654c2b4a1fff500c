"""Narration output (JSON lines) and its alignment to video snippets (TEA Eq. 3, docs/design.md
section 1).

One line per video, as `python -m data_prep.narrate` writes it:
  {"video_id": "AO8RW", "interval": 1.0, "narratives": [{"t": 0.0, "text": "..."}, ...], ...}
"""

import json
import os
from typing import Protocol

import numpy as np

from data_prep.text import tokenize
from tea_jax.errors import InputError



def read_narratives(path: str) -> tuple[dict[str, list[tuple[float, str]]], list[str]]:
  """{video_id: [(t, text), ...] in time order} and the problems found (file:line: reason).

  A truncated last line (a crash while writing) or any malformed line is reported, not fatal; a
  video that appears twice keeps its last line (a resumed run rewrote it).
  """
  if not os.path.isfile(path):
    raise FileNotFoundError(f"narratives file not found: {path}")
  videos, problems = {}, []
  name = os.path.basename(path)
  with open(path, encoding="utf-8") as f:
    for number, line in enumerate(f, start=1):
      if not line.strip():
        continue
      where = f"{name}:{number}"
      try:
        record = json.loads(line)
        vid = str(record["video_id"])
        items = [(float(n["t"]), str(n["text"])) for n in record["narratives"]]
      except (json.JSONDecodeError, KeyError, TypeError, ValueError) as e:
        problems.append(f"{where}: malformed narration line ({type(e).__name__}: {e})")
        continue
      if not items:
        problems.append(f"{where}: video {vid!r} has no narratives")
        continue
      videos[vid] = sorted(items, key=lambda item: item[0])
  return videos, problems


class TextEncoder(Protocol):
  """A frozen sentence encoder: `dim` and `encode(sentences) -> (n, dim) float32`."""

  dim: int

  def encode(self, sentences: list[str]) -> np.ndarray:
    ...


class MeanWordVectorEncoder:
  """Sentence feature = mean of the word vectors of its tokens (GloVe by default); tokens without a
  vector are left out, and a sentence with none gets zeros."""

  def __init__(self, index: dict[str, int], vectors: np.ndarray):
    self.index, self.vectors = index, vectors
    self.dim = vectors.shape[1]

  def encode(self, sentences: list[str]) -> np.ndarray:
    out = np.zeros((len(sentences), self.dim), np.float32)
    for i, sentence in enumerate(sentences):
      rows = [self.index[t] for t in tokenize(sentence) if t in self.index]
      if rows:
        out[i] = self.vectors[rows].mean(axis=0)
    return out


def align_to_snippets(times: np.ndarray, features: np.ndarray, duration: float,
                      v_len: int) -> np.ndarray:
  """(v_len, dim): snippet k covers [k d / v_len, (k + 1) d / v_len); it takes the mean of the
  sentence features whose time falls inside, or else the narrative nearest in time to its centre
  (first one on a tie)."""
  times = np.asarray(times, np.float64)
  if len(times) == 0:
    raise InputError("no narratives to align")
  width = duration / v_len
  slot = np.floor(times / width).astype(np.int64)
  out = np.zeros((v_len, features.shape[1]), np.float32)
  for k in range(v_len):
    inside = slot == k
    if inside.any():
      out[k] = features[inside].mean(axis=0)
    else:
      centre = (k + 0.5) * width
      out[k] = features[int(np.argmin(np.abs(times - centre)))]
  return out


def video_narrative(items: list[tuple[float, str]], encoder: TextEncoder, duration: float,
                    v_len: int) -> np.ndarray:
  """(v_len, dim) narrative features of one video: its (t, text) captions encoded, then aligned."""
  times = np.array([t for t, _ in items])
  return align_to_snippets(times, encoder.encode([text for _, text in items]), duration, v_len)
