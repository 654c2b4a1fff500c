"""The training-record schema (one tf.train.Example per video, carrying all of its queries), as a
tensorflow-datasets FeaturesDict.

One record per video stores a video's features once however many queries it has (ActivityNet-CD
train has 10,984 videos for 51,415 pairs); the reader (tea_jax.data.input_pipeline) expands each
record into its (video, query) pairs.

tensorflow-datasets serves three purposes here: the schema is declared once and shared by the
writer (data_prep.build_records) and the reader (tea_jax.data.input_pipeline); `serialize_example`
checks every field's dtype and shape before anything is written; and `features.json`, saved next to
the records, lets `tfds.features.FeatureConnector.from_config(records_dir)` recover the schema
without this code. Large float arrays use raw-bytes encoding, which tf.data decodes far faster than
float lists.
"""

import os

import numpy as np


def data_path(data_config, name: str) -> str:
  """The path of `config.data.<name>`, joined to data.root unless absolute or empty."""
  path = data_config[name]
  return path if not path or os.path.isabs(path) else os.path.join(data_config.root, path)


def records_dir(data_config) -> str:
  """The records folder of a config's data section (data.records_dir under data.root)."""
  return data_path(data_config, "records_dir")


# Written to meta.json as "record_format"; the reader refuses record sets of another format.
# /2: durations and moment times in float64 (the metrics compute in float64). /3: each pair
# names its query (a query with several windows has a pair per window).
RECORD_FORMAT = "video-with-queries/3"


def record_features(video_dim: int, narrative_dim: int):
  """The schema; `video` and `narrative` have one row per (reduced) snippet, `queries` one entry per
  (video, query) pair of the split (at least one)."""
  # Imported here: `data_path` must not need tensorflow-datasets (the GPU image has none).
  import tensorflow_datasets as tfds  # pylint: disable=import-outside-toplevel
  F = tfds.features  # pylint: disable=invalid-name
  return F.FeaturesDict({
      # Video id of the benchmark (e.g. "AO8RW", "v_QOlSCBRmfWY").
      "video_id": F.Text(),
      # Video duration in seconds, float64 (raw bytes: a float feature would round it to float32).
      "duration": F.Tensor(shape=(), dtype=np.float64, encoding=F.Encoding.BYTES),
      # (v_len, video_dim) snippet features after the reduction to at most max_snippets rows.
      "video": F.Tensor(shape=(None, video_dim), dtype=np.float32, encoding=F.Encoding.BYTES),
      # (v_len, narrative_dim) narrative sentence features aligned to the snippets (zeros if the
      # dataset has no narratives).
      "narrative": F.Tensor(shape=(None, narrative_dim), dtype=np.float32,
                            encoding=F.Encoding.BYTES),
      # The video's queries, in annotation order.
      "queries": F.Sequence({
          # The query sentence as written in the annotation file.
          "query": F.Text(),
          # Where the pair comes from: "file:line" or "file:video_id[index]".
          "source": F.Text(),
          # Index of the pair in its split (annotation order), for predictions files.
          "pair_index": F.Scalar(dtype=np.int64),
          # Index of the pair's query in its split: the pairs of a query with several windows
          # share it (evaluation scores the best-matching window, once per query).
          "query_index": F.Scalar(dtype=np.int64),
          # The query's id in a .jsonl annotation file ("" for the benchmarks' files).
          "qid": F.Text(),
          # Ground-truth moment in seconds, float64: max(0, start) and min(end, duration) as EMB
          # clips them (a kept bad record may still have start > end: docs/design.md section 16).
          "start_time": F.Tensor(shape=(), dtype=np.float64, encoding=F.Encoding.BYTES),
          "end_time": F.Tensor(shape=(), dtype=np.float64, encoding=F.Encoding.BYTES),
          # Snippet labels (s, e) of the moment (docs/design.md section 10), indices < v_len.
          "start_label": F.Scalar(dtype=np.int64),
          "end_label": F.Scalar(dtype=np.int64),
          # Vocabulary ids of the query tokens (PAD 0 never appears; UNK 1 for unknown words).
          "word_ids": F.Sequence(np.int64),
      }),
  })
