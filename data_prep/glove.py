"""Streaming GloVe text reader that keeps only the words a dataset needs, with a .npy cache.

`glove.840B.300d.txt` is 5.6 GB with 2.2M lines; some words contain spaces, so a line is kept only
when it has exactly dim + 1 space-separated fields (EMB's rule). A repeated word keeps its LAST
vector (EMB overwrites). The file is read once; the kept rows are cached next to a JSON word list so
that the next run with the same file and word set skips the scan.
"""

import hashlib
import json
import os

import numpy as np
from tqdm import tqdm

from tea_jax.files import atomic_write


def _cache_key(path: str, words: list[str], dim: int) -> str:
  stat = os.stat(path)
  digest = hashlib.sha256()
  digest.update(f"{os.path.abspath(path)}|{stat.st_size}|{stat.st_mtime_ns}|{dim}".encode())
  for word in sorted(words):
    digest.update(word.encode("utf-8") + b"\0")
  return digest.hexdigest()[:16]


def read_vectors(path: str, words, dim: int = 300, cache_dir: str | None = None,
                 progress: bool = True) -> tuple[dict[str, int], np.ndarray, dict]:
  """Vectors of `words` found in the GloVe file.

  Returns (index: word -> row, vectors (n, dim) float32, stats) where rows follow the order of
  `words` restricted to the found ones. stats counts lines read, malformed lines skipped and
  repeated words.
  """
  if not os.path.isfile(path):
    raise FileNotFoundError(f"word-vector file not found: {path}")
  wanted = list(dict.fromkeys(words))
  cache = None
  if cache_dir:
    key = _cache_key(path, wanted, dim)
    cache = os.path.join(cache_dir, f"{os.path.basename(path)}.{key}")
    if os.path.isfile(cache + ".npy") and os.path.isfile(cache + ".json"):
      with open(cache + ".json", encoding="utf-8") as f:
        meta = json.load(f)
      vectors = np.load(cache + ".npy")
      return {w: i for i, w in enumerate(meta["words"])}, vectors, meta["stats"]

  wanted_set = set(wanted)
  found: dict[str, np.ndarray] = {}
  stats = {"lines": 0, "malformed": 0, "repeated": 0, "file": os.path.abspath(path)}
  size = os.path.getsize(path)
  with open(path, "rb") as f, tqdm(total=size, unit="B", unit_scale=True, disable=not progress,
                                   desc=f"scan {os.path.basename(path)}") as bar:
    for raw in f:
      bar.update(len(raw))
      stats["lines"] += 1
      fields = raw.rstrip(b"\r\n").split(b" ")
      if len(fields) != dim + 1:
        stats["malformed"] += 1
        continue
      try:
        word = fields[0].decode("utf-8")
      except UnicodeDecodeError:
        stats["malformed"] += 1
        continue
      if word not in wanted_set:
        continue
      try:
        vector = np.asarray(fields[1:], dtype=np.float32)
      except ValueError:
        stats["malformed"] += 1
        continue
      if word in found:
        stats["repeated"] += 1
      found[word] = vector  # a repeated word keeps its last vector
  kept = [w for w in wanted if w in found]
  vectors = np.stack([found[w] for w in kept]) if kept else np.zeros((0, dim), np.float32)
  stats["found"] = len(kept)
  if cache:
    # The .json is the commit marker: it is written last, so a crash leaves no half cache.
    atomic_write(cache + ".npy", lambda f: np.save(f, vectors), binary=True)
    atomic_write(cache + ".json", lambda f: json.dump({"words": kept, "stats": stats}, f))
  return {w: i for i, w in enumerate(kept)}, vectors, stats
