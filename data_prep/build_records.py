"""Annotations + features + GloVe + narratives -> sharded TFRecords per split.

    python -m data_prep.build_records --config configs/charades_cd.py [--config.data.root=DIR]

Writes into config.data.records_dir (relative to data.root):
  <split>-<k>-of-<n>.tfrecord   one tf.train.Example per video with all its queries (schema:
                                tea_jax/records.py and the README)
  features.json                 the tensorflow-datasets feature spec of the records
  vocab.json                    the vocabulary (id -> word; PAD 0, UNK 1)
  word_vectors.npy              (vocab - 2, word_dim) frozen vectors of ids 2..
  meta.json                     counts, dims, padded-length hints, sources, bad records, config
The whole folder is built under a temporary name and swapped in at the end, so a crash never
leaves a half-written record set and never destroys the previous one.
"""

import collections
import json
import logging
import os
import shutil
import sys
import tempfile
import time

import ml_collections
import numpy as np
from absl import app, flags
from ml_collections import config_flags
from tqdm import tqdm

from data_prep import glove
from data_prep.annotations import BadAnnotation, read_annotations, read_durations
from data_prep.features import FeatureSource, MissingFeatures, reduce_snippets
from data_prep.labels import moment_labels
from data_prep.narratives import MeanWordVectorEncoder, read_narratives, video_narrative
from data_prep.text import build_vocabulary, tokenize, word_ids
from tea_jax import cli, files
from tea_jax.data.schema import RECORD_FORMAT, data_path, record_features

log = logging.getLogger("build_records")


class BuildError(RuntimeError):
  """Bad input that stops the build (strict mode, or nothing usable)."""


def shard_names(split: str, num_shards: int) -> list[str]:
  return [f"{split}-{k:05d}-of-{num_shards:05d}.tfrecord" for k in range(num_shards)]


def build_records(config: ml_collections.ConfigDict, progress: bool = True) -> dict:
  """Builds the record set of `config.data`; returns the meta dict (also written to meta.json)."""
  import tensorflow as tf  # pylint: disable=import-outside-toplevel
  data, model = config.data, config.model
  started = time.time()
  out_dir = data_path(data, "records_dir")
  durations = read_durations(data_path(data, "durations")) if data.durations else None

  annotations, tokens = {}, {}
  for split, name in data.splits.items():
    path = os.path.join(data.root, name) if not os.path.isabs(name) else name
    annotations[split] = read_annotations(path, durations, strict=data.strict)
    tokens[split] = [tokenize(p.sentence) for p in annotations[split].pairs]
    for bad in annotations[split].bad:
      log.warning("skipped bad record %s: %s", bad.source, bad.reason)

  narratives, narrative_problems = {}, []
  if data.narratives:
    narratives, narrative_problems = read_narratives(data_path(data, "narratives"))
    for problem in narrative_problems:
      log.warning("narratives: %s", problem)
  narrative_words = {t for items in narratives.values() for _, text in items for t in tokenize(text)}

  candidates = [t for split in data.splits for sentence in tokens[split] for t in sentence]
  index, vectors, vector_stats = glove.read_vectors(
      data_path(data, "word_vectors"), candidates + sorted(narrative_words), dim=model.word_dim,
      cache_dir=os.path.join(data.root, "cache"), progress=progress)
  vocab = build_vocabulary((tokens[s][i] for s in data.splits for i in range(len(tokens[s]))),
                           index)
  vocab_index = {w: i for i, w in enumerate(vocab)}
  word_vectors = vectors[[index[w] for w in vocab[2:]]] if len(vocab) > 2 else \
      np.zeros((0, model.word_dim), np.float32)
  encoder = MeanWordVectorEncoder(index, vectors)
  narrative_dim = model.narrative_dim
  if narratives and encoder.dim != narrative_dim:
    raise BuildError(f"narrative encoder gives {encoder.dim}-d features but "
                     f"config.model.narrative_dim is {narrative_dim}")

  features = FeatureSource(data_path(data, "features"))
  schema = record_features(model.video_dim, narrative_dim)
  parent = os.path.dirname(os.path.abspath(out_dir))
  os.makedirs(parent, exist_ok=True)
  tmp_dir = tempfile.mkdtemp(dir=parent, prefix=f".tmp-{os.path.basename(out_dir)}-")
  meta_splits, missing, max_len, max_words = {}, collections.OrderedDict(), 0, 0
  try:
    for split, ann in annotations.items():
      by_video = collections.OrderedDict()
      for i, pair in enumerate(ann.pairs):
        by_video.setdefault(pair.video_id, []).append(i)
      num_shards = max(1, min(data.num_shards, len(by_video)))
      names = shard_names(split, num_shards)
      writers = [tf.io.TFRecordWriter(os.path.join(tmp_dir, n)) for n in names]
      written, skipped, videos_written = 0, 0, 0
      per_shard = -(-len(by_video) // num_shards)
      bar = tqdm(total=len(ann.pairs), desc=f"records {split}", disable=not progress)
      for vid, indices in by_video.items():
        bar.update(len(indices))
        try:
          reduced = reduce_snippets(features.get(vid), data.max_snippets, data.pooling)
        except MissingFeatures as e:
          missing.setdefault(vid, str(e))
          if data.strict:
            raise BuildError(f"{split}: {e}") from None
          skipped += len(indices)
          continue
        if reduced.shape[1] != model.video_dim:
          raise BuildError(f"features of {vid} have {reduced.shape[1]} channels; "
                           f"config.model.video_dim is {model.video_dim}")
        v_len = reduced.shape[0]
        duration = ann.pairs[indices[0]].duration
        other = [ann.pairs[i] for i in indices if abs(ann.pairs[i].duration - duration) > 1e-3]
        if other:  # one record per video stores one duration (true of every benchmark file)
          raise BuildError(f"{split}: video {vid!r} has duration {duration} at "
                           f"{ann.pairs[indices[0]].source} but {other[0].duration} at "
                           f"{other[0].source}")
        if data.narratives:
          if vid not in narratives:
            missing.setdefault(vid, f"no narratives for video {vid!r} in {data.narratives}")
            if data.strict:
              raise BuildError(f"{split}: no narratives for video {vid!r}")
            skipped += len(indices)
            continue
          narrative = video_narrative(narratives[vid], encoder, duration, v_len)
        else:
          narrative = np.zeros((v_len, narrative_dim), np.float32)
        queries = []
        for i in indices:
          pair = ann.pairs[i]
          ids = word_ids(tokens[split][i], vocab_index, data.max_words)
          if not ids:
            log.warning("skipped %s: the query has no tokens", pair.source)
            skipped += 1
            continue
          max_words = max(max_words, len(ids))
          s, e = moment_labels(pair.start, pair.end, v_len, pair.duration)
          queries.append({"query": pair.sentence, "source": pair.source, "pair_index": i,
                          "start_time": pair.start, "end_time": pair.end, "start_label": s,
                          "end_label": e, "word_ids": ids})
        if not queries:
          continue
        max_len = max(max_len, v_len)
        example = schema.serialize_example({
            "video_id": vid, "duration": duration, "video": reduced, "narrative": narrative,
            "queries": queries})
        writers[min(videos_written // per_shard, num_shards - 1)].write(example)
        written += len(queries)
        videos_written += 1
      bar.close()
      for w in writers:
        w.close()
      meta_splits[split] = {"annotation_file": ann.path, "pairs": written, "skipped": skipped,
                            "bad_records": [vars(b) for b in ann.bad], "shards": names,
                            "videos": len(by_video), "videos_written": videos_written}
      log.info("%s: %d pairs written, %d skipped", split, written, skipped)
    if not any(m["pairs"] for m in meta_splits.values()):
      raise BuildError("no pair could be written: check the features and narratives paths")

    schema.save_config(tmp_dir)
    files.write_json(os.path.join(tmp_dir, "vocab.json"), vocab)
    np.save(os.path.join(tmp_dir, "word_vectors.npy"), word_vectors.astype(np.float32))
    meta = {
        "record_format": RECORD_FORMAT, "splits": meta_splits, "vocab_size": len(vocab),
        "word_dim": int(model.word_dim),
        "video_dim": int(model.video_dim), "narrative_dim": int(narrative_dim),
        "max_snippets_seen": int(max_len), "max_words_seen": int(max_words),
        "missing_videos": dict(missing), "narrative_problems": narrative_problems,
        "word_vectors": vector_stats,
        "sources": {"root": os.path.abspath(data.root), "features": data_path(data, "features"),
                    "word_vectors": data_path(data, "word_vectors"),
                    "narratives": data_path(data, "narratives"),
                    "durations": data_path(data, "durations")},
        "config": config.to_dict(), "build_seconds": round(time.time() - started, 2),
    }
    # meta.json is written last inside the temporary folder: its presence marks a complete build.
    files.write_json(os.path.join(tmp_dir, "meta.json"), meta)
    old = None
    if os.path.exists(out_dir):
      old = tempfile.mkdtemp(dir=parent, prefix=f".old-{os.path.basename(out_dir)}-")
      os.rmdir(old)
      os.replace(out_dir, old)
    os.replace(tmp_dir, out_dir)
    if old:
      shutil.rmtree(old, ignore_errors=True)
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
  try:
    meta = build_records(config)
  except (BuildError, BadAnnotation, FileNotFoundError, ValueError) as e:
    sys.exit(f"build_records: {e}")
  counts = {s: m["pairs"] for s, m in meta["splits"].items()}
  print(json.dumps({"records_dir": data_path(config.data, "records_dir"), "pairs": counts,
                    "vocab_size": meta["vocab_size"], "missing_videos": len(meta["missing_videos"]),
                    "seconds": meta["build_seconds"]}, indent=1))


if __name__ == "__main__":
  config_flags.DEFINE_config_file("config", None, "Experiment config file (configs/*.py).",
                                  lock_config=True)
  flags.mark_flag_as_required("config")
  app.run(main, flags_parser=cli.parse_flags)
