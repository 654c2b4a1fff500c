"""Ask a trained model about one video: the moments of its features that match each query.

    python -m tea_jax.predict --workdir runs/charades_cd_tea --features data/charades_cd/features \
        --video-id AO8RW --duration 33.67 --query "a person opens the door" [--query ...] \
        [--narratives data/charades_cd/narratives.jsonl --word-vectors glove.840B.300d.txt] \
        [--step N] [--top-k 5]

Prepares the inputs exactly as data_prep.build_records does (the workdir's config gives the snippet
reduction, query length and model): features from a .npy file, a folder of <video_id>.npy or an
HDF5 file; query tokens mapped through the workdir's vocabulary (unknown words -> UNK); with a
TEA model, the video's narratives embedded with the same word vectors and aligned to the snippets.
Prints one JSON object per query: the best `top_k` moments (start and end seconds, snippet
indices, probability), best first. A workdir written by tea_jax.import_emb needs its vocabulary
(`--words` at import).
"""

import argparse
import json
import os
import sys

import numpy as np

from data_prep import glove
from data_prep.features import FeatureSource, MissingFeatures, reduce_snippets
from data_prep.narratives import MeanWordVectorEncoder, read_narratives, video_narrative
from data_prep.text import tokenize, word_ids
from tea_jax import checkpointing, inference, metrics
from tea_jax.errors import InputError, UserError
from tea_jax.model.config import ModelConfig

UNKNOWN_VOCABULARY = "no vocabulary words"


def read_vocabulary(workdir: str) -> dict[str, int]:
  """word -> id of a workdir's vocab.json (trained or imported with --words)."""
  path = os.path.join(workdir, "vocab.json")
  if not os.path.isfile(path):
    raise FileNotFoundError(f"no vocab.json in workdir {workdir!r}")
  with open(path, encoding="utf-8") as f:
    vocab = json.load(f)
  words = vocab.get("words") if isinstance(vocab, dict) else vocab
  if not words:
    raise InputError(f"{path} has {UNKNOWN_VOCABULARY} (an EMB import needs "
                     f"`python -m tea_jax.import_emb --words FILE`)")
  return {w: i for i, w in enumerate(words)}


def load_features(path: str, video_id: str | None) -> np.ndarray:
  """(T, D) features from a .npy file, or of `video_id` from a .npy folder or an HDF5 file."""
  if path.endswith(".npy"):
    if not os.path.isfile(path):
      raise FileNotFoundError(f"features not found: {path}")
    feats = np.load(path).astype(np.float32)
  else:
    if not video_id:
      raise InputError(f"--video-id is needed to pick a video from {path}")
    source = FeatureSource(path)
    try:
      feats = source.get(video_id)
    finally:
      source.close()
  if feats.ndim != 2 or not len(feats):
    raise InputError(f"features of {video_id or path} have shape {feats.shape}; expected (T, D)")
  return feats


def narrative_of(config, narratives_path: str, video_id: str, vectors_path: str, duration: float,
                 v_len: int, cache_dir: str | None) -> np.ndarray:
  """(v_len, narrative_dim) narrative features of one video, as build_records computes them."""
  narratives, _ = read_narratives(narratives_path)
  if video_id not in narratives:
    raise InputError(f"no narratives for video {video_id!r} in {narratives_path}")
  items = narratives[video_id]
  words = sorted({t for _, text in items for t in tokenize(text)})
  index, vectors, _ = glove.read_vectors(vectors_path, words, dim=config.model.word_dim,
                                         cache_dir=cache_dir, progress=False)
  return video_narrative(items, MeanWordVectorEncoder(index, vectors), duration, v_len)


def data_settings(config) -> dict:
  """How the workdir's records were prepared: its config's data section, or for a workdir written
  by tea_jax.import_emb (no data section) EMB's own settings: at most max_positions snippets
  (mean-pooled) and query words."""
  data = config.get("data") or {}
  limit = config.model.max_positions
  return {"max_snippets": data.get("max_snippets", limit),
          "max_words": data.get("max_words", limit), "pooling": data.get("pooling", "mean")}


def predict(config, variables, vocabulary: dict[str, int], video: np.ndarray, duration: float,
            queries: list[str], narrative: np.ndarray | None = None,
            top_k: int = 1) -> list[dict]:
  """The best `top_k` moments of each query in a video of `duration` seconds, given its snippet
  features `video` (v_len, video_dim), already reduced as the records are, and, for TEA models,
  its aligned `narrative` (v_len, narrative_dim). `variables` as checkpointing.restore_variables
  returns them, `vocabulary` as read_vocabulary does."""
  if duration <= 0:
    raise InputError(f"duration must be positive, got {duration}")
  if not queries:
    raise InputError("no query given")
  if video.shape[1] != config.model.video_dim:
    raise InputError(f"features have {video.shape[1]} channels; the model expects "
                     f"{config.model.video_dim}")
  v_len = video.shape[0]
  if narrative is None:
    if ModelConfig.from_config(config).uses_narrative:
      raise InputError(f"the model reads narratives (merge={config.model.merge!r}, "
                       f"paragraph_branch={config.model.paragraph_branch}): pass them")
    narrative = np.zeros((v_len, config.model.narrative_dim), np.float32)
  ids = []
  for query in queries:
    tokens = word_ids(tokenize(query), vocabulary, data_settings(config)["max_words"])
    if not tokens:
      raise InputError(f"the query {query!r} has no tokens")
    ids.append(tokens)
  words = max(len(t) for t in ids)
  n = len(queries)
  batch = {
      "video": np.repeat(video[None], n, axis=0),
      "narrative": np.repeat(narrative[None].astype(np.float32), n, axis=0),
      "video_mask": np.ones((n, v_len), np.float32),
      "word_ids": np.array([t + [0] * (words - len(t)) for t in ids], np.int32),
      "query_mask": np.array([[1.0] * len(t) + [0.0] * (words - len(t)) for t in ids], np.float32),
  }
  out = inference.forward(config, variables, batch)
  start_prob, end_prob = np.asarray(out["start_prob"]), np.asarray(out["end_prob"])
  results = []
  for q, query in enumerate(queries):
    moments = []
    for i, j, p in metrics.top_spans(start_prob[q], end_prob[q], top_k):
      start_s, end_s = metrics.index_to_time(i, j, v_len, duration)
      moments.append({"start": round(float(start_s), 3), "end": round(float(end_s), 3),
                      "start_index": i, "end_index": j, "probability": p})
    results.append({"query": query, "moments": moments})
  return results


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(prog="python -m tea_jax.predict",
                                   description=__doc__.split("\n")[0])
  parser.add_argument("--workdir", required=True, help="a trained or imported tea_jax workdir")
  parser.add_argument("--features", required=True,
                      help="<video>.npy, or a folder of <video_id>.npy, or an HDF5 file")
  parser.add_argument("--video-id", help="the video (default: the .npy file's name)")
  parser.add_argument("--duration", type=float, required=True, help="video duration in seconds")
  parser.add_argument("--query", action="append", required=True, help="a sentence (repeatable)")
  parser.add_argument("--narratives", help="narratives JSONL (needed by TEA models)")
  parser.add_argument("--word-vectors", help="GloVe text file the records were built with")
  parser.add_argument("--cache-dir", help="where to cache the GloVe rows read (default: none)")
  parser.add_argument("--step", type=int, help="checkpoint step (default: the best)")
  parser.add_argument("--top-k", type=int, default=1, help="moments per query")
  args = parser.parse_args(argv)
  video_id = args.video_id or (os.path.splitext(os.path.basename(args.features))[0]
                               if args.features.endswith(".npy") else None)
  try:
    if args.top_k < 1:
      raise InputError(f"--top-k must be at least 1, got {args.top_k}")
    config = checkpointing.read_config(args.workdir)
    vocabulary = read_vocabulary(args.workdir)
    settings = data_settings(config)
    video = reduce_snippets(load_features(args.features, video_id), settings["max_snippets"],
                            settings["pooling"])
    narrative = None
    if ModelConfig.from_config(config).uses_narrative and not args.narratives:
      raise InputError(f"the model in {args.workdir} reads narratives: pass --narratives and "
                       f"--word-vectors")
    if args.narratives:
      if not args.word_vectors:
        raise InputError("--narratives needs --word-vectors (the GloVe file of the records)")
      narrative = narrative_of(config, args.narratives, video_id, args.word_vectors,
                               args.duration, video.shape[0], args.cache_dir)
    variables, _ = checkpointing.restore_variables(args.workdir, args.step)
    results = predict(config, variables, vocabulary, video, args.duration, args.query, narrative,
                      args.top_k)
  except (UserError, FileNotFoundError, MissingFeatures) as e:
    # MissingFeatures is a KeyError: its message is its first argument.
    print(f"error: {e.args[0] if isinstance(e, KeyError) and e.args else e}", file=sys.stderr)
    return 2
  for result in results:
    print(json.dumps({"video_id": video_id, **result}))
  return 0
