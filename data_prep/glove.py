"""Streaming GloVe text reader that keeps only the words a dataset needs, with a .npy cache.

`glove.840B.300d.txt` is 5.6 GB with 2.2M lines. A line is read as EMB's vocab_emb_gen reads it:
the file is UTF-8 text split into lines at every Python line break (str.splitlines: also \\v, \\f,
\\x1c-\\x1e, \\x85, \\u2028, \\u2029), each line is stripped of surrounding whitespace and split at
single spaces, and it is kept only with exactly dim + 1 fields (some words contain spaces). A
repeated word keeps its LAST vector (EMB overwrites). Values are parsed as float64, then stored as
float32 (as EMB's float() into a float32 array). Unlike EMB, a vector with a nan or inf value is
skipped and reported (file:line: word) instead of entering the vectors. The file is read once; the
kept rows are cached next to a JSON word list so that the next run with the same file and word set
skips the scan.
"""

import hashlib
import json
import logging
import os
import re
from typing import Iterator

import numpy as np
from tqdm import tqdm

from tea_jax.files import atomic_write

log = logging.getLogger(__name__)

# Bumped when the line rule changes, so that caches written under another rule are not reused.
_RULE = "emb-lines/2"
# Bytes after which a chunk between two b"\n" may hold another Python line break, or whitespace
# that str.strip() removes and bytes.strip() does not: such chunks take the decoding path.
_SLOW = re.compile(rb"[\x0b\x0c\r\x1c-\x1f\x80-\xff]")
# At most this many non-finite vectors are listed in the stats (all are logged and counted).
_LISTED = 100


def _cache_key(path: str, words: list[str], dim: int) -> str:
  stat = os.stat(path)
  digest = hashlib.sha256()
  digest.update(f"{_RULE}|{os.path.abspath(path)}|{stat.st_size}|{stat.st_mtime_ns}|{dim}".encode())
  for word in sorted(words):
    digest.update(word.encode("utf-8") + b"\0")
  return digest.hexdigest()[:16]


def line_fields(chunk: bytes) -> Iterator[list[bytes]]:
  """The space-separated fields of each text line in one b"\\n"-terminated chunk of the file, by
  EMB's rule (module docstring); UnicodeDecodeError when a chunk that needs decoding is not
  UTF-8."""
  body = chunk.rstrip(b"\r\n")
  if not _SLOW.search(body):  # plain ASCII: bytes.strip() is str.strip() and there is one line
    yield body.strip().split(b" ")
    return
  for line in body.decode("utf-8").splitlines():
    yield [field.encode("utf-8") for field in line.strip().split(" ")]


def _new_stats(path: str) -> dict:
  return {"file": os.path.abspath(path), "lines": 0, "malformed": 0, "repeated": 0,
          "non_finite": 0, "non_finite_vectors": []}


def _keep(fields: list[bytes], wanted: set[str], found: dict, stats: dict, where: str) -> None:
  """Stores the vector of one dim + 1 field line in `found` when its word is wanted."""
  try:
    word = fields[0].decode("utf-8")
  except UnicodeDecodeError:
    stats["malformed"] += 1
    return
  if word not in wanted:
    return
  try:
    with np.errstate(over="ignore"):  # a value past float32's range becomes inf: reported below
      vector = np.asarray([float(x) for x in fields[1:]], np.float64).astype(np.float32)
  except ValueError:
    stats["malformed"] += 1
    return
  if not np.all(np.isfinite(vector)):
    stats["non_finite"] += 1
    if len(stats["non_finite_vectors"]) < _LISTED:
      stats["non_finite_vectors"].append(f"{where}: {word}")
    log.warning("%s: the vector of %r has nan or inf values: skipped", where, word)
    return
  if word in found:
    stats["repeated"] += 1
  found[word] = vector  # a repeated word keeps its last vector


def scan(path: str, wanted: set[str], dim: int, progress: bool = True) -> tuple[dict, dict]:
  """One pass over the file: ({word: float32 vector} of the wanted words, stats)."""
  found: dict[str, np.ndarray] = {}
  stats = _new_stats(path)
  name = os.path.basename(path)
  with open(path, "rb") as f, tqdm(total=os.path.getsize(path), unit="B", unit_scale=True,
                                   disable=not progress, desc=f"scan {name}") as bar:
    for number, chunk in enumerate(f, start=1):
      bar.update(len(chunk))
      stats["lines"] += 1
      try:
        lines = list(line_fields(chunk))
      except UnicodeDecodeError:
        stats["malformed"] += 1
        continue
      for fields in lines:
        if len(fields) != dim + 1:
          stats["malformed"] += 1
          continue
        _keep(fields, wanted, found, stats, f"{name}:{number}")
  return found, stats


def _load_cache(cache: str) -> tuple[dict[str, int], np.ndarray, dict] | None:
  if not (os.path.isfile(cache + ".npy") and os.path.isfile(cache + ".json")):
    return None
  with open(cache + ".json", encoding="utf-8") as f:
    meta = json.load(f)
  return {w: i for i, w in enumerate(meta["words"])}, np.load(cache + ".npy"), meta["stats"]


def _save_cache(cache: str, kept: list[str], vectors: np.ndarray, stats: dict) -> None:
  # The .json is the commit marker: it is written last, so a crash leaves no half cache.
  atomic_write(cache + ".npy", lambda f: np.save(f, vectors), binary=True)
  atomic_write(cache + ".json", lambda f: json.dump({"words": kept, "stats": stats}, f))


def read_vectors(path: str, words, dim: int = 300, cache_dir: str | None = None,
                 progress: bool = True) -> tuple[dict[str, int], np.ndarray, dict]:
  """Vectors of `words` found in the GloVe file.

  Returns (index: word -> row, vectors (n, dim) float32, stats) where rows follow the order of
  `words` restricted to the found ones. stats counts lines read, malformed lines skipped, repeated
  words and non-finite vectors skipped (listed as "file:line: word").
  """
  if not os.path.isfile(path):
    raise FileNotFoundError(f"word-vector file not found: {path}")
  wanted = list(dict.fromkeys(words))
  cache = None
  if cache_dir:
    cache = os.path.join(cache_dir, f"{os.path.basename(path)}.{_cache_key(path, wanted, dim)}")
    cached = _load_cache(cache)
    if cached is not None:
      return cached
  found, stats = scan(path, set(wanted), dim, progress)
  kept = [w for w in wanted if w in found]
  vectors = np.stack([found[w] for w in kept]) if kept else np.zeros((0, dim), np.float32)
  stats["found"] = len(kept)
  if cache:
    _save_cache(cache, kept, vectors, stats)
  return {w: i for i, w in enumerate(kept)}, vectors, stats
