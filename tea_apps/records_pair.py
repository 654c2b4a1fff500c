"""One (video, query) pair of a benchmark split, read from a workdir's records exactly as evaluation
reads it: the reduced snippet features, the aligned narrative rows, the duration and the truth."""

import dataclasses
import os

import numpy as np

from tea_jax.data.schema import records_dir
from tea_jax.errors import InputError


@dataclasses.dataclass
class Pair:
  """A pair of the records: `video` (v_len, video_dim) and `narrative` (v_len, narrative_dim) as
  the model reads them, the query text and the true moment in seconds."""

  split: str
  pair_index: int
  video_id: str
  duration: float
  query: str
  start_time: float
  end_time: float
  video: np.ndarray
  narrative: np.ndarray


def workdir_records(config, workdir: str) -> str:
  """The records folder of a workdir's config (config.json's data section)."""
  data = config.get("data")
  if not data or not data.get("records_dir"):
    raise InputError(f"{workdir}/config.json has no data section (an imported EMB workdir?): "
                     f"--split/--pair-index read a trained workdir's records")
  folder = records_dir(data)
  if not os.path.isdir(folder):
    raise FileNotFoundError(f"records of {workdir} not found at {folder} (config.json's "
                            f"data.root {data.root!r}: run from the folder the run was started "
                            f"in, or give an absolute data.root)")
  return folder


def read_pair(config, workdir: str, split: str, pair_index: int) -> Pair:
  """The pair `pair_index` (its index in the split's annotation order) of `split`."""
  # pylint: disable=import-outside-toplevel
  import tensorflow as tf
  from tea_jax.data.input_pipeline import load_meta, split_files
  from tea_jax.data.schema import record_features
  folder = workdir_records(config, workdir)
  meta = load_meta(folder)
  files = split_files(folder, meta, split)
  schema = record_features(meta["video_dim"], meta["narrative_dim"])
  for serialized in tf.data.TFRecordDataset(files):
    example = schema.deserialize_example(serialized)
    queries = example["queries"]
    where = np.flatnonzero(queries["pair_index"].numpy() == pair_index)
    if not len(where):
      continue
    q = int(where[0])
    return Pair(split=split, pair_index=pair_index,
                video_id=example["video_id"].numpy().decode("utf-8"),
                duration=float(example["duration"].numpy()),
                query=queries["query"][q].numpy().decode("utf-8"),
                start_time=float(queries["start_time"][q].numpy()),
                end_time=float(queries["end_time"][q].numpy()),
                video=example["video"].numpy(), narrative=example["narrative"].numpy())
  raise InputError(f"split {split!r} of {folder} has no pair {pair_index} (it has "
                   f"{meta['splits'][split]['pairs']} pairs; skipped records have no index here)")
