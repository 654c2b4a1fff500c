"""tf.data reader of the TFRecords written by data_prep.build_records.

Each record is one video with all its queries; the reader decodes a video once and expands it into
its (video, query) pairs, which share the decoded features until batching copies them. Batches are
numpy dicts of FIXED shapes (padded snippets L and words W are the same for every
batch of a run), so the jitted step never recompiles:
  video (B, L, Dv), narrative (B, L, Dn), video_mask (B, L), word_ids (B, W) int32, query_mask
  (B, W), start_label / end_label (B,) int32, duration / start_time / end_time (B,) float64,
  pair_index (B,) int32, valid (B,) float32 (0 on padding examples), video_id / query (B,) str.
Training: shuffled (a fresh order per epoch, derived from the seed and the epoch: shard order, a
buffer of videos, then a buffer of pairs) and repeated; it can start at any step, so a resumed run
sees exactly the batches it would have seen.
Evaluation: every example exactly once, in record order; the last batch is padded with examples
whose `valid` is 0.
"""

import json
import os

import numpy as np
import tensorflow as tf

from tea_jax.config_checks import uses_narrative
from tea_jax.data.schema import RECORD_FORMAT, record_features
from tea_jax.errors import ConfigError, InputError

# TensorFlow only feeds data here: it must never take a GPU (or its memory) from JAX.
tf.config.set_visible_devices([], "GPU")

STRING_KEYS = ("video_id", "query", "qid")


def load_meta(records_dir: str) -> dict:
  path = os.path.join(records_dir, "meta.json")
  if not os.path.isfile(path):
    raise FileNotFoundError(f"no meta.json in {records_dir}: build the records first "
                            f"(python -m data_prep.build_records --config ...)")
  with open(path, encoding="utf-8") as f:
    meta = json.load(f)
  if meta.get("record_format") != RECORD_FORMAT:
    raise InputError(f"the records in {records_dir} have format "
                     f"{meta.get('record_format', 'one example per pair')!r}, this "
                     f"reader needs {RECORD_FORMAT!r}: rebuild them with "
                     f"python -m data_prep.build_records --config ...")
  return meta


def round_up(n: int, multiple: int = 8) -> int:
  return max(multiple, -(-n // multiple) * multiple)


def padded_lengths(data_config, meta: dict) -> tuple[int, int]:
  """(L, W) of every batch: the config's values, or the longest in the records rounded up to 8."""
  length = data_config.pad_snippets or min(round_up(meta["max_snippets_seen"]),
                                           max(data_config.max_snippets, 8))
  words = data_config.pad_words or round_up(meta["max_words_seen"])
  if length < meta["max_snippets_seen"]:
    raise ConfigError(f"config.data.pad_snippets={length} is shorter than the longest video in the "
                     f"records ({meta['max_snippets_seen']} snippets)")
  if words < meta["max_words_seen"]:
    raise ConfigError(f"config.data.pad_words={words} is shorter than the longest query in the "
                     f"records ({meta['max_words_seen']} words)")
  return length, words


def split_files(records_dir: str, meta: dict, split: str) -> list[str]:
  if split not in meta["splits"]:
    raise ConfigError(f"split {split!r} is not in {records_dir} (it has {sorted(meta['splits'])})")
  files = [os.path.join(records_dir, name) for name in meta["splits"][split]["shards"]]
  for path in files:
    if not os.path.isfile(path):
      raise FileNotFoundError(f"record shard missing: {path}")
  return files


def _video_parser(meta: dict, length: int, words: int):
  """Serialized video record -> (shared video tensors, per-query tensors with a leading Q axis)."""
  schema = record_features(meta["video_dim"], meta["narrative_dim"])

  def parse(serialized):
    ex = schema.deserialize_example(serialized)
    v_len = tf.shape(ex["video"])[0]
    pad_rows = [[0, length - v_len], [0, 0]]
    shared = {
        "video": tf.pad(ex["video"], pad_rows),
        "narrative": tf.pad(ex["narrative"], pad_rows),
        "video_mask": tf.cast(tf.range(length) < v_len, tf.float32),
    }
    q = ex["queries"]
    n = tf.shape(q["pair_index"])[0]
    ids = tf.cast(q["word_ids"], tf.int32)  # ragged (Q, n_words)
    per_query = {
        "word_ids": ids.to_tensor(0, shape=[None, words]),
        "query_mask": tf.cast(tf.range(words, dtype=tf.int64)[None] < ids.row_lengths()[:, None],
                              tf.float32),
        "start_label": tf.cast(q["start_label"], tf.int32),
        "end_label": tf.cast(q["end_label"], tf.int32),
        "duration": tf.fill([n], ex["duration"]),
        "start_time": q["start_time"], "end_time": q["end_time"],
        "pair_index": tf.cast(q["pair_index"], tf.int32),
        "query_index": tf.cast(q["query_index"], tf.int32), "qid": q["qid"],
        "valid": tf.ones([n], tf.float32),
        "video_id": tf.fill([n], ex["video_id"]), "query": q["query"],
    }
    return shared, per_query

  return parse


def _pairs(shared, per_query):
  """The (video, query) pairs of one parsed video record, in query order."""
  n = tf.shape(per_query["pair_index"], out_type=tf.int64)[0]
  both = tf.data.Dataset.zip(tf.data.Dataset.from_tensors(shared).repeat(n),
                             tf.data.Dataset.from_tensor_slices(per_query))
  return both.map(lambda a, b: {**a, **b})


def damaged_shard(files: list[str]) -> str | None:
  """The first record file that cannot be read to its end (bad length or checksum), if any."""
  for path in files:
    try:
      for _ in tf.data.TFRecordDataset(path):
        pass
    except tf.errors.DataLossError:
      return path
  return None


def _numpy_batches(ds, files: list[str], records_dir: str):
  """Iterates a batched dataset as numpy dicts; a damaged record file ends the run with one line
  naming it instead of TensorFlow's DataLossError traceback."""
  try:
    for batch in ds:
      yield _to_numpy(batch)
  except (tf.errors.DataLossError, tf.errors.InvalidArgumentError) as e:
    where = damaged_shard(files) or f"a record file of {records_dir}"
    detail = e.message.strip().splitlines()[0][:160] if e.message else type(e).__name__
    raise InputError(f"{where}: corrupt or truncated record ({detail}); rebuild the records with "
                     f"python -m data_prep.build_records --config ...") from None


def _to_numpy(batch: dict) -> dict:
  out = {}
  for key, value in batch.items():
    value = value.numpy()
    out[key] = value.astype(str) if key in STRING_KEYS else value
  return out


# Fields of config.data that change what the records contain: a run must use records built with
# the same values.
RECORD_FIELDS = ("pooling", "max_snippets", "max_words", "bad_records", "strict")


def check_built_with(records_dir: str, meta: dict, data_config) -> None:
  """Refuses records built with other record-shaping settings than `data_config` has."""
  built = meta.get("config", {}).get("data", {})
  for field in RECORD_FIELDS:
    if field in built and field in data_config and built[field] != data_config[field]:
      raise InputError(f"the records in {records_dir} were built with data.{field}="
                       f"{built[field]!r} but this config has {data_config[field]!r}: rebuild them "
                       f"with python -m data_prep.build_records, or use the config they were "
                       f"built with")


class Records:
  """The record set of one config: split sizes, padded lengths and batch iterators."""

  def __init__(self, records_dir: str, data_config):
    self.records_dir = records_dir
    self.meta = load_meta(records_dir)
    check_built_with(records_dir, self.meta, data_config)
    self.length, self.words = padded_lengths(data_config, self.meta)
    self.shuffle_buffer = data_config.get("shuffle_buffer", 4096)

  def check_fits(self, model) -> None:
    """Refuses a model (its config section) whose feature widths differ from the records', or
    that reads narratives from records whose narrative rows hold none."""
    for key in ("video_dim", "word_dim", "narrative_dim"):
      if model[key] != self.meta[key]:
        raise InputError(f"config.model.{key}={model[key]} but the records in "
                         f"{self.records_dir} have {self.meta[key]}")
    narratives = self.meta.get("narratives")
    if narratives is not None and not narratives["read"] and uses_narrative(model):
      raise InputError(f"the records in {self.records_dir} hold no narratives (built for a model "
                       f"that reads none, or without data.narratives) but this model reads them "
                       f"(merge={model['merge']!r}, paragraph_branch={model['paragraph_branch']}): "
                       f"build its records with data.narratives set")

  def queries(self, split: str) -> int:
    """The split's queries in the records (evaluation counts each once, whatever its windows)."""
    return self.meta["splits"][split]["queries"]

  def annotated_queries(self, split: str) -> int:
    """The queries the split's annotation file yields (those in the records and those left out
    because their videos lack features or narratives)."""
    return self.meta["splits"][split]["queries_annotated"]

  def size(self, split: str) -> int:
    return self.meta["splits"][split]["pairs"]

  def train_batches(self, split: str, batch_size: int, seed: int, start_step: int = 0,
                    num_epochs: int | None = None, process_index: int = 0, process_count: int = 1):
    """Endless (or num_epochs) shuffled full batches, starting at `start_step`.

    Epoch e visits every pair once in an order fixed by (seed, e): shards interleaved in a seeded
    order, a seeded buffer of data.shuffle_buffer / 4 video records, their pairs, then a seeded
    buffer of data.shuffle_buffer pairs (pairs share their video's decoded features, so the pair
    buffer holds at most that many videos' features); batches run across epoch
    boundaries, so steps = ceil(epochs * n / batch). Multi-host: each process reads its
    consecutive share of every global batch (rows process_index * batch / process_count on).
    """
    files = split_files(self.records_dir, self.meta, split)
    n = self.size(split)
    if n == 0:
      raise InputError(f"split {split!r} of {self.records_dir} has no examples")
    local_batch = batch_size // process_count
    first = start_step * batch_size  # global example position
    first_epoch, offset = divmod(first, n)
    last_epoch = num_epochs if num_epochs is not None else np.iinfo(np.int32).max

    pair_buffer = max(1, min(n, self.shuffle_buffer))
    # Videos are shuffled first (a quarter of the buffer, in videos), then their pairs.
    video_buffer = max(1, min(self.meta["splits"][split]["videos_written"],
                              self.shuffle_buffer // 4))
    parse = _video_parser(self.meta, self.length, self.words)

    def epoch(e):
      # Shard order and bounded buffers are shuffled per epoch, all seeded by (seed, e): a
      # full-split buffer would not fit in memory for ActivityNet.
      epoch_seed = tf.cast(seed, tf.int64) * 1_000_003 + e
      order = tf.data.Dataset.from_tensor_slices(files).shuffle(
          len(files), seed=epoch_seed, reshuffle_each_iteration=False)
      # Sequential interleave (no num_parallel_calls): deterministic by construction.
      ds = order.interleave(tf.data.TFRecordDataset, cycle_length=min(4, len(files)),
                            block_length=1)
      ds = ds.shuffle(video_buffer, seed=epoch_seed + 1, reshuffle_each_iteration=False)
      ds = ds.map(parse, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
      return ds.flat_map(_pairs).shuffle(pair_buffer, seed=epoch_seed + 2,
                                         reshuffle_each_iteration=False)

    ds = tf.data.Dataset.range(first_epoch, last_epoch).flat_map(epoch).skip(offset)
    if process_count > 1:
      # Process i keeps every process_count-th block of local_batch consecutive pairs: the global
      # batch (process 0's rows, then process 1's, ...) is exactly the one-process batch, so a run
      # does not depend on how many hosts it is spread over.
      ds = ds.enumerate().filter(
          lambda j, _: (j // local_batch) % process_count == process_index).map(lambda _, x: x)
    ds = ds.batch(local_batch, drop_remainder=True).prefetch(tf.data.AUTOTUNE)
    yield from _numpy_batches(ds, files, self.records_dir)

  def eval_batches(self, split: str, batch_size: int):
    """Every example once, in record order; the last batch is padded with valid = 0 rows."""
    files = split_files(self.records_dir, self.meta, split)
    parse = _video_parser(self.meta, self.length, self.words)
    ds = tf.data.TFRecordDataset(files).map(parse, num_parallel_calls=tf.data.AUTOTUNE,
                                             deterministic=True).flat_map(_pairs)
    for batch in _numpy_batches(ds.batch(batch_size).prefetch(tf.data.AUTOTUNE), files,
                                self.records_dir):
      short = batch_size - len(batch["valid"])
      if short:
        batch = {k: np.concatenate([v, np.zeros((short,) + v.shape[1:], v.dtype)
                                    if k not in STRING_KEYS else np.full(short, "", v.dtype)])
                 for k, v in batch.items()}
        # A padding example still needs one valid snippet and word so that its math stays finite.
        batch["video_mask"][-short:, 0] = 1.0
        batch["query_mask"][-short:, 0] = 1.0
      yield batch

  def word_vectors(self) -> np.ndarray:
    return np.load(os.path.join(self.records_dir, "word_vectors.npy"))

  def vocabulary(self) -> list[str]:
    with open(os.path.join(self.records_dir, "vocab.json"), encoding="utf-8") as f:
      return json.load(f)
