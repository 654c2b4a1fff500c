"""A workdir's own files, written and read here only, and the lock that gives a run the workdir.

  config.json                the experiment config (ml_collections, as a dict)
  vocab.json                 the vocabulary the embedding table implies
  word_vectors.npy           the train-free retriever's GloVe rows of vocabulary ids 2.. (it has
                             no checkpoint to hold them)
  metrics.json               the final evaluation's metrics per split
  predictions_<split>.jsonl  one evaluated pair per line
  evaluations.jsonl          one line per evaluation of a split during training (step, epoch,
                             split, metrics), each written once across kills and resumes
  .lock                      the run's lock
(checkpoints/ and damaged_checkpoints/ belong to tea_jax.checkpointing; tensorboard/ to clu).

One run per workdir: the lock is `fcntl.flock` on `<workdir>/.lock`, which the kernel releases
when the process ends, however it ends. The file records who holds it, so a refused run can say
which process is using the workdir; a run that ends (normally or with an error) empties it, so
only a killed run leaves a holder behind, and the next run takes it over with a warning that the
previous one did not finish.
"""

import contextlib
import fcntl
import json
import logging
import os
import socket
import time
from typing import Any, Iterable

import ml_collections
import numpy as np

from tea_jax import files
from tea_jax.errors import CheckpointError, InputError

log = logging.getLogger(__name__)
LOCK_FILE = ".lock"
CONFIG_FILE = "config.json"
VOCAB_FILE = "vocab.json"
METRICS_FILE = "metrics.json"
EVALUATIONS_FILE = "evaluations.jsonl"
WORD_VECTORS_FILE = "word_vectors.npy"
PAD_ID, UNK_ID = 0, 1


def write_config(workdir: str, config: ml_collections.ConfigDict) -> None:
  """Saves the run's experiment config (the architecture a checkpoint was trained with)."""
  files.write_json(os.path.join(workdir, CONFIG_FILE), config.to_dict())


def read_config(workdir: str) -> ml_collections.ConfigDict:
  """The experiment config saved in the workdir."""
  path = os.path.join(workdir, CONFIG_FILE)
  if not os.path.isfile(path):
    raise FileNotFoundError(f"no {CONFIG_FILE} in workdir {workdir!r}: not a tea_jax workdir")
  with open(path, encoding="utf-8") as f:
    return ml_collections.ConfigDict(json.load(f))


def write_vocabulary(workdir: str, size: int, words: list[str] | None, source: str) -> None:
  """Saves the vocabulary (id -> word, PAD 0 and UNK 1) that the embedding table implies; `words`
  may be None for an imported checkpoint whose words are not known."""
  files.write_json(os.path.join(workdir, VOCAB_FILE),
                   {"size": size, "pad_id": PAD_ID, "unk_id": UNK_ID, "words": words,
                    "source": source})


def read_vocabulary(workdir: str) -> dict[str, int]:
  """word -> id of the workdir's vocabulary."""
  path = os.path.join(workdir, VOCAB_FILE)
  if not os.path.isfile(path):
    raise FileNotFoundError(f"no {VOCAB_FILE} in workdir {workdir!r}")
  with open(path, encoding="utf-8") as f:
    words = json.load(f).get("words")
  if not words:
    raise InputError(f"{path} has no vocabulary words (an EMB import needs "
                     f"`python -m tea_jax.import_emb --words FILE`)")
  return {w: i for i, w in enumerate(words)}


def write_word_vectors(workdir: str, vectors: np.ndarray) -> None:
  """Saves the word vectors of vocabulary ids 2.. (the records' word_vectors.npy)."""
  files.atomic_write(os.path.join(workdir, WORD_VECTORS_FILE),
                     lambda f: np.save(f, np.asarray(vectors, np.float32)), binary=True)


def read_word_vectors(workdir: str) -> np.ndarray:
  """The word vectors of vocabulary ids 2.. saved by write_word_vectors."""
  path = os.path.join(workdir, WORD_VECTORS_FILE)
  if not os.path.isfile(path):
    raise FileNotFoundError(f"no {WORD_VECTORS_FILE} in workdir {workdir!r}")
  return np.load(path)


def write_metrics(workdir: str, metrics: dict[str, Any]) -> None:
  """Saves the final evaluation's metrics."""
  files.write_json(os.path.join(workdir, METRICS_FILE), metrics)


def read_metrics(workdir: str) -> dict[str, Any]:
  """The final evaluation's metrics (metrics.json)."""
  path = os.path.join(workdir, METRICS_FILE)
  if not os.path.isfile(path):
    raise FileNotFoundError(f"no {METRICS_FILE} in workdir {workdir!r}: the run has not finished "
                            f"its final evaluation")
  with open(path, encoding="utf-8") as f:
    return json.load(f)


def predictions_path(workdir: str, split: str) -> str:
  """Where the evaluated pairs of `split` are written."""
  return os.path.join(workdir, f"predictions_{split}.jsonl")


def write_predictions(workdir: str, split: str, rows: Iterable[dict]) -> None:
  """Saves one JSON line per evaluated pair of `split`."""
  files.write_lines(predictions_path(workdir, split), rows)


def read_predictions(workdir: str, split: str) -> list[dict]:
  """The evaluated pairs of `split`, one dict per pair."""
  path = predictions_path(workdir, split)
  if not os.path.isfile(path):
    raise FileNotFoundError(f"no predictions for split {split!r} in workdir {workdir!r}")
  with open(path, encoding="utf-8") as f:
    return [json.loads(line) for line in f if line.strip()]


def read_evaluations(workdir: str) -> list[dict]:
  """The training's evaluations so far (evaluations.jsonl), in the order they were made."""
  path = os.path.join(workdir, EVALUATIONS_FILE)
  if not os.path.isfile(path):
    return []
  with open(path, encoding="utf-8") as f:
    return [json.loads(line) for line in f if line.strip()]


def add_evaluations(workdir: str, lines: list[dict]) -> None:
  """Appends the lines of one evaluation (the file is rewritten whole, atomically: a kill leaves
  it with or without them, never with half a line)."""
  files.write_lines(os.path.join(workdir, EVALUATIONS_FILE), read_evaluations(workdir) + lines)


def keep_evaluations_until(workdir: str, step: int) -> None:
  """Drops the evaluations made after `step`: a run resumed from the checkpoint of `step` makes
  them again (the same, since training resumes bit for bit), so none is written twice."""
  kept = [line for line in read_evaluations(workdir) if line["step"] <= step]
  if len(kept) != len(read_evaluations(workdir)):
    files.write_lines(os.path.join(workdir, EVALUATIONS_FILE), kept)


@contextlib.contextmanager
def locked(workdir: str, what: str = "run"):
  """Holds the workdir's lock for the duration of the block; refuses at once if it is held."""
  os.makedirs(workdir, exist_ok=True)
  path = os.path.join(workdir, LOCK_FILE)
  fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
  try:
    try:
      fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
      raise CheckpointError(f"workdir {workdir} is in use by another run ({_holder(fd)}); wait "
                            f"for it to finish or choose another --workdir") from None
    previous = _holder(fd)
    if previous != "unknown":
      log.warning("workdir %s: taking over the lock of a run that ended without releasing it "
                  "(%s)", workdir, previous)
    _write(fd, {"pid": os.getpid(), "host": socket.gethostname(), "what": what,
                "since": time.strftime("%Y-%m-%d %H:%M:%S")})
    try:
      yield
    finally:
      os.ftruncate(fd, 0)  # an ended run (even by an error) leaves nothing to take over
  finally:
    os.close(fd)  # releases the flock


def _holder(fd: int) -> str:
  os.lseek(fd, 0, os.SEEK_SET)
  raw = os.read(fd, 4096)
  try:
    info = json.loads(raw)
    return f"{info['what']} of pid {info['pid']} on {info['host']} since {info['since']}"
  except (ValueError, KeyError, TypeError):
    return "unknown"


def _write(fd: int, info: dict) -> None:
  os.ftruncate(fd, 0)
  os.lseek(fd, 0, os.SEEK_SET)
  os.write(fd, json.dumps(info).encode())
  os.fsync(fd)
