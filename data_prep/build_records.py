"""Annotations + features + GloVe + narratives -> sharded TFRecords per split.

    python -m data_prep.build_records --config configs/charades_cd.py [--config.data.root=DIR]

Writes into config.data.records_dir (relative to data.root; records_<pooling> by default):
  <split>-<k>-of-<n>.tfrecord   one tf.train.Example per video with all its queries (schema:
                                tea_jax/data/schema.py and the README)
  features.json                 the tensorflow-datasets feature spec of the records
  vocab.json                    the vocabulary (id -> word; PAD 0, UNK 1), EMB's vocab_emb_gen's
  word_vectors.npy              (vocab - 2, word_dim) frozen vectors of ids 2..
  meta.json                     counts, dims, padded-length hints, sources, bad records (kept and
                                skipped), non-finite word vectors, config
The whole folder is built under a temporary name and swapped in at the end, so a crash never
leaves a half-written record set and never destroys the previous one.
"""

import collections
import dataclasses
import json
import logging
import os
import shutil
import tempfile
import time

import ml_collections
import numpy as np
from absl import flags
from ml_collections import config_flags
from tqdm import tqdm

from data_prep import glove
from data_prep.annotations import Annotations, read_annotations, read_durations
from data_prep.features import FeatureSource, MissingFeatures, reduce_snippets
from data_prep.labels import moment_labels
from data_prep.narratives import MeanWordVectorEncoder, read_narratives, video_narrative
from data_prep.text import build_vocabulary, tokenize, word_ids
from tea_jax import cli, files
from tea_jax.config_checks import check_data, uses_narrative
from tea_jax.data.schema import RECORD_FORMAT, data_path, record_features, records_dir
from tea_jax.errors import InputError

log = logging.getLogger(__name__)



@dataclasses.dataclass
class Vocabulary:
  """The records' vocabulary and the GloVe rows read for it."""

  words: list[str]  # id -> word: [PAD, UNK] + the counted words
  index: dict[str, int]  # word -> id
  vectors: np.ndarray  # (len(words) - 2, word_dim) float32 rows of ids 2..
  encoder: MeanWordVectorEncoder  # narrative sentences, on the same GloVe rows
  stats: dict  # glove.read_vectors' stats


@dataclasses.dataclass
class Build:
  """What writing the splits shares: inputs, vocabulary, schema and the running maxima."""

  config: ml_collections.ConfigDict
  features: FeatureSource
  narratives: dict
  narratives_file: str  # "" when the model reads no narratives (zero rows)
  vocab: Vocabulary
  schema: object
  tmp_dir: str
  missing: dict = dataclasses.field(default_factory=collections.OrderedDict)
  # split -> its videos given zero narrative rows (data.missing="zeros")
  zero_narratives: dict = dataclasses.field(default_factory=dict)
  max_len: int = 0
  max_words: int = 0


def shard_names(split: str, num_shards: int) -> list[str]:
  return [f"{split}-{k:05d}-of-{num_shards:05d}.tfrecord" for k in range(num_shards)]


def split_order(data: ml_collections.ConfigDict) -> list[str]:
  """The splits in declared order (data.split_order), the training split first: the order in
  which the vocabulary counts words (EMB: train, val, test), whatever order the ConfigDict keeps
  `data.splits` in."""
  declared = list(data.get("split_order", ()) or data.splits)
  return [data.train_split] + [s for s in declared if s != data.train_split]


def read_splits(data, order: list[str]) -> tuple[dict[str, Annotations], dict[str, list]]:
  """Each split's annotations (bad records logged) and the tokens of its pairs, in `order`."""
  durations = read_durations(data_path(data, "durations")) if data.durations else None
  annotations, tokens = {}, {}
  for split in order:
    name = data.splits[split]
    path = name if os.path.isabs(name) else os.path.join(data.root, name)
    ann = read_annotations(path, durations, strict=data.strict,
                           bad_records=data.get("bad_records", "reference"))
    for bad in ann.bad:
      log.warning("%s bad record %s: %s", "kept" if bad.kept else "skipped", bad.source,
                  bad.reason)
    annotations[split] = ann
    tokens[split] = [tokenize(p.sentence) for p in ann.pairs]
  return annotations, tokens


def narratives_file(config) -> str:
  """The narratives file the records need: data.narratives when the model reads narratives, else
  "" (EMB's records need no narration: their narrative rows are zeros)."""
  if not config.data.narratives or not uses_narrative(config.model):
    return ""
  return data_path(config.data, "narratives")


def read_narrative_file(path: str) -> tuple[dict, list[str]]:
  """{video_id: [(t, text), ...]} of a narratives file (empty for "") and its problems."""
  if not path:
    return {}, []
  narratives, problems = read_narratives(path)
  for problem in problems:
    log.warning("narratives: %s", problem)
  return narratives, problems


def make_vocabulary(config, tokens: dict[str, list], order: list[str], narratives: dict,
                    progress: bool, cache_dir: str | None = None) -> Vocabulary:
  """EMB's vocab_emb_gen: the words of every split counted in `order`, most frequent first (ties
  keep first-seen order), restricted to words with a GloVe vector; plus the narrative encoder.
  The GloVe rows read are cached in `cache_dir` (none: no cache)."""
  data, model = config.data, config.model
  narrative_words = {t for items in narratives.values() for _, text in items
                     for t in tokenize(text)}
  candidates = [t for split in order for sentence in tokens[split] for t in sentence]
  index, vectors, stats = glove.read_vectors(
      data_path(data, "word_vectors"), candidates + sorted(narrative_words), dim=model.word_dim,
      cache_dir=cache_dir, progress=progress)
  words = build_vocabulary((sentence for split in order for sentence in tokens[split]), index)
  rows = vectors[[index[w] for w in words[2:]]] if len(words) > 2 else \
      np.zeros((0, model.word_dim), np.float32)
  encoder = MeanWordVectorEncoder(index, vectors)
  if narratives and encoder.dim != model.narrative_dim:
    raise InputError(f"narrative encoder gives {encoder.dim}-d features but "
                     f"config.model.narrative_dim is {model.narrative_dim}")
  return Vocabulary(words, {w: i for i, w in enumerate(words)}, rows, encoder, stats)


def video_features(build: Build, split: str, vid: str) -> np.ndarray | None:
  """(v_len, video_dim) reduced snippet features, or None (recorded as missing) without them."""
  data = build.config.data
  try:
    reduced = reduce_snippets(build.features.get(vid), data.max_snippets, data.pooling)
  except MissingFeatures as e:
    build.missing.setdefault(vid, str(e))
    if data.strict:
      raise InputError(f"{split}: {e}") from None
    return None
  if reduced.shape[1] != build.config.model.video_dim:
    raise InputError(f"features of {vid} have {reduced.shape[1]} channels; "
                     f"config.model.video_dim is {build.config.model.video_dim}")
  return reduced


def video_duration(split: str, ann: Annotations, vid: str, indices: list[int]) -> float:
  """The one duration of a video's pairs (a record stores one; true of every benchmark file)."""
  duration = ann.pairs[indices[0]].duration
  other = [ann.pairs[i] for i in indices if abs(ann.pairs[i].duration - duration) > 1e-3]
  if other:
    raise InputError(f"{split}: video {vid!r} has duration {duration} at "
                     f"{ann.pairs[indices[0]].source} but {other[0].duration} at "
                     f"{other[0].source}")
  return duration


def video_narrative_rows(build: Build, split: str, vid: str, duration: float,
                         v_len: int) -> np.ndarray | None:
  """(v_len, narrative_dim) aligned narratives, zeros without a narratives file, or None when the
  video has none (recorded as missing)."""
  data = build.config.data
  if not build.narratives_file or vid in build.zero_narratives.get(split, ()):
    return np.zeros((v_len, build.config.model.narrative_dim), np.float32)
  if vid not in build.narratives:
    build.missing.setdefault(vid, f"no narratives for video {vid!r} in {build.narratives_file}")
    if data.strict:
      raise InputError(f"{split}: no narratives for video {vid!r}")
    return None
  return video_narrative(build.narratives[vid], build.vocab.encoder, duration, v_len)


def video_queries(build: Build, ann: Annotations, tokens: list, indices: list[int],
                  v_len: int) -> list[dict]:
  """The record entries of a video's pairs (a query without tokens is reported and left out)."""
  queries = []
  for i in indices:
    pair = ann.pairs[i]
    ids = word_ids(tokens[i], build.vocab.index, build.config.data.max_words)
    if not ids:
      log.warning("skipped %s: the query has no tokens", pair.source)
      continue
    build.max_words = max(build.max_words, len(ids))
    s, e = moment_labels(pair.start, pair.end, v_len, pair.duration)
    queries.append({"query": pair.sentence, "source": pair.source, "pair_index": i,
                    "query_index": pair.query_index, "qid": pair.qid,
                    "start_time": pair.start, "end_time": pair.end, "start_label": s,
                    "end_label": e, "word_ids": ids})
  return queries


def video_example(build: Build, split: str, ann: Annotations, tokens: list, vid: str,
                  indices: list[int]) -> tuple[bytes | None, list[dict]]:
  """(serialized record or None, its query entries) of one video."""
  reduced = video_features(build, split, vid)
  if reduced is None:
    return None, []
  v_len = reduced.shape[0]
  duration = video_duration(split, ann, vid, indices)
  narrative = video_narrative_rows(build, split, vid, duration, v_len)
  if narrative is None:
    return None, []
  queries = video_queries(build, ann, tokens, indices, v_len)
  if not queries:
    return None, []
  build.max_len = max(build.max_len, v_len)
  return build.schema.serialize_example({
      "video_id": vid, "duration": duration, "video": reduced, "narrative": narrative,
      "queries": queries}), queries


def check_missing(build: Build, split: str, by_video: dict) -> None:
  """An evaluation split's videos without features, or without narratives for a model that reads
  them (data.missing): "fail" stops here naming them, so that no annotated pair drops out of an
  evaluation unseen; "zeros" gives missing narratives zero rows (counted in meta.json); "skip"
  leaves their pairs out (reported, and metrics.json says how many pairs were evaluated)."""
  data = build.config.data
  if split == data.train_split or data.strict:  # strict stops at the first one anyway
    return
  policy = data.get("missing", "fail")
  no_features = [v for v in by_video if v not in build.features]
  no_narratives = [v for v in by_video if build.narratives_file and v not in build.narratives
                   and v not in no_features]
  if policy == "zeros" and no_narratives:
    build.zero_narratives[split] = no_narratives
    log.warning("%s: %d videos without narratives get zero rows (data.missing='zeros'), e.g. %s",
                split, len(no_narratives), ", ".join(no_narratives[:3]))
    no_narratives = []
  if policy == "skip" or not (no_features or no_narratives):
    return
  pairs = sum(len(by_video[v]) for v in no_features + no_narratives)
  listed = [f"{len(ids)} without {what} ({', '.join(ids[:3])}{', ...' if len(ids) > 3 else ''})"
            for what, ids in (("features", no_features), ("narratives", no_narratives)) if ids]
  raise InputError(f"{split}: {' and '.join(listed)} of its {len(by_video)} videos; their "
                   f"{pairs} pairs would not be evaluated. Provide them, or set data.missing="
                   f"'zeros' (missing narratives as zero rows) or 'skip' (left out; the metrics "
                   f"then say how many pairs were evaluated)")


def write_split(build: Build, split: str, ann: Annotations, tokens: list,
                progress: bool) -> dict:
  """Writes one split's shards into the temporary folder; returns its meta.json entry."""
  import tensorflow as tf  # pylint: disable=import-outside-toplevel
  by_video = collections.OrderedDict()
  for i, pair in enumerate(ann.pairs):
    by_video.setdefault(pair.video_id, []).append(i)
  check_missing(build, split, by_video)
  num_shards = max(1, min(build.config.data.num_shards, len(by_video)))
  names = shard_names(split, num_shards)
  per_shard = -(-len(by_video) // num_shards)
  written, videos_written, query_indices = 0, 0, set()
  writers = [tf.io.TFRecordWriter(os.path.join(build.tmp_dir, n)) for n in names]
  try:
    for vid, indices in tqdm(by_video.items(), total=len(by_video), desc=f"records {split}",
                             disable=not progress):
      example, queries = video_example(build, split, ann, tokens, vid, indices)
      if example is not None:
        writers[min(videos_written // per_shard, num_shards - 1)].write(example)
        written += len(queries)
        query_indices |= {q["query_index"] for q in queries}
        videos_written += 1
  finally:
    for writer in writers:
      writer.close()
  kept = sum(b.kept for b in ann.bad)
  log.info("%s: %d pairs written, %d skipped", split, written, len(ann.pairs) - written)
  return {"annotation_file": ann.path, "pairs": written, "skipped": len(ann.pairs) - written,
          # Evaluation counts queries (a .jsonl query's windows are pairs of one query).
          "queries": len(query_indices), "queries_annotated": ann.queries,
          "bad_records": [dataclasses.asdict(b) for b in ann.bad], "kept_bad_records": kept,
          "skipped_records": len(ann.bad) - kept, "shards": names, "videos": len(by_video),
          "videos_written": videos_written}


def record_meta(build: Build, splits: dict, order: list[str], narrative_problems: list[str],
                started: float) -> dict:
  """The meta.json of a finished build."""
  config, model, data = build.config, build.config.model, build.config.data
  return {
      "record_format": RECORD_FORMAT, "splits": splits, "split_order": order,
      "vocab_size": len(build.vocab.words), "word_dim": int(model.word_dim),
      "video_dim": int(model.video_dim), "narrative_dim": int(model.narrative_dim),
      "max_snippets_seen": int(build.max_len), "max_words_seen": int(build.max_words),
      "pooling": data.pooling, "max_snippets": int(data.max_snippets),
      "bad_records": {"policy": "fail" if data.strict else data.get("bad_records", "reference"),
                      "kept": sum(m["kept_bad_records"] for m in splits.values()),
                      "skipped": sum(m["skipped_records"] for m in splits.values())},
      "missing_videos": dict(build.missing), "narrative_problems": narrative_problems,
      # Whether the narrative rows hold narratives (a model that reads them refuses zero rows).
      "narratives": {"read": bool(build.narratives_file), "file": build.narratives_file or None,
                     "zero_rows": build.zero_narratives},
      "word_vectors": build.vocab.stats,
      "sources": {"root": os.path.abspath(data.root), "features": data_path(data, "features"),
                  "word_vectors": data_path(data, "word_vectors"),
                  "narratives": build.narratives_file or None,
                  "durations": data_path(data, "durations")},
      "config": config.to_dict(), "build_seconds": round(time.time() - started, 2),
  }


def swap_in(tmp_dir: str, out_dir: str) -> None:
  """Replaces out_dir by the finished tmp_dir; the old folder is removed only afterwards."""
  parent = os.path.dirname(os.path.abspath(out_dir))
  old = None
  if os.path.exists(out_dir):
    old = tempfile.mkdtemp(dir=parent, prefix=f".old-{os.path.basename(out_dir)}-")
    os.rmdir(old)
    os.replace(out_dir, old)
  os.replace(tmp_dir, out_dir)
  if old:
    shutil.rmtree(old, ignore_errors=True)


def write_records(build: Build, annotations: dict, tokens: dict, order: list[str],
                  narrative_problems: list[str], started: float, progress: bool) -> dict:
  """Every split, the vocabulary files and meta.json (last: it marks a complete build)."""
  splits = {split: write_split(build, split, annotations[split], tokens[split], progress)
            for split in order}
  if not any(m["pairs"] for m in splits.values()):
    raise InputError("no pair could be written: check the features and narratives paths")
  build.schema.save_config(build.tmp_dir)
  files.write_json(os.path.join(build.tmp_dir, "vocab.json"), build.vocab.words)
  np.save(os.path.join(build.tmp_dir, "word_vectors.npy"), build.vocab.vectors.astype(np.float32))
  meta = record_meta(build, splits, order, narrative_problems, started)
  files.write_json(os.path.join(build.tmp_dir, "meta.json"), meta)
  return meta


def build_records(config: ml_collections.ConfigDict, progress: bool = True) -> dict:
  """Builds the record set of `config.data`; returns the meta dict (also written to meta.json)."""
  data = config.data
  check_data(data, max_positions=config.model.max_positions)
  started = time.time()
  order = split_order(data)
  annotations, tokens = read_splits(data, order)
  narratives_path = narratives_file(config)
  narratives, narrative_problems = read_narrative_file(narratives_path)
  vocab = make_vocabulary(config, tokens, order, narratives, progress,
                          cache_dir=os.path.join(data.root, "cache"))
  out_dir = records_dir(data)
  parent = os.path.dirname(os.path.abspath(out_dir))
  os.makedirs(parent, exist_ok=True)
  features = FeatureSource(data_path(data, "features"))
  tmp_dir = tempfile.mkdtemp(dir=parent, prefix=f".tmp-{os.path.basename(out_dir)}-")
  build = Build(config, features, narratives, narratives_path, vocab,
                record_features(config.model.video_dim, config.model.narrative_dim), tmp_dir)
  try:
    meta = write_records(build, annotations, tokens, order, narrative_problems, started, progress)
    swap_in(tmp_dir, out_dir)
  except BaseException:
    shutil.rmtree(tmp_dir, ignore_errors=True)
    raise
  finally:
    features.close()
  return meta


def main(argv):
  del argv
  cli.setup_logging()
  config = flags.FLAGS.config
  meta = cli.run_reporting(lambda: build_records(config))
  counts = {s: m["pairs"] for s, m in meta["splits"].items()}
  print(json.dumps({"records_dir": records_dir(config.data), "pairs": counts,
                    "bad_records": meta["bad_records"], "vocab_size": meta["vocab_size"],
                    "missing_videos": len(meta["missing_videos"]),
                    "seconds": meta["build_seconds"]}, indent=1))


if __name__ == "__main__":
  config_flags.DEFINE_config_file("config", None, "Experiment config file (configs/*.py).",
                                  lock_config=True)
  flags.mark_flag_as_required("config")
  cli.run_app(main, __doc__, __file__)
