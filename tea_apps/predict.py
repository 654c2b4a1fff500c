"""Ask a trained model which moments of a video match a sentence.

    # A video file: frames -> I3D features -> (TEA models) narration -> word vectors -> the model
    python -m tea_apps.predict --workdir RUN --video my.mp4 --query "a person opens the door" \\
        [--query ...] --i3d-weights rgb_charades.pt \\
        [--narrator-model llava-1.5-7b-hf --word-vectors glove.840B.300d.txt] [--cache DIR] \\
        [--top-k 5] [--plot out.png [--truth START END] [--compare-workdir RUN_EMB]]
    # Features already extracted (a .npy, a folder of <video_id>.npy or an HDF5 file)
    python -m tea_apps.predict --workdir RUN --features data/charades_cd/features \\
        --video-id AO8RW --duration 33.67 --query "..." \\
        [--narratives data/charades_cd/narratives.jsonl --word-vectors glove.840B.300d.txt]
    # A benchmark pair of the workdir's records (config.json's data section), its truth drawn
    python -m tea_apps.predict --workdir RUN --split test_ood --pair-index 17 --plot [PNG] \\
        [--videos DIR] [--compare-workdir RUN_EMB]

Inputs are prepared exactly as data_prep.build_records prepares the records, with the same
functions: snippet features reduced to the workdir's max_snippets with its pooling, query tokens
mapped through the workdir's vocabulary (unknown words -> UNK), and for TEA models the narratives
embedded with the same word vectors and aligned to the snippets. A video file's I3D features and
narration are cached (tea_apps/video_inputs.py), so asking again costs one forward pass.
Prints one JSON object per query: the best `--top-k` moments (start and end seconds, snippet
indices, probability), best first, with the truth and the top moment's IoU when known. `--plot`
draws the timeline of the answer (tea_apps/timeline.py). A workdir written by
tea_jax.import_emb needs its vocabulary (`--words` at import).
"""

import argparse
import dataclasses
import importlib.util
import json
import os
import sys

import numpy as np

from data_prep import glove
from data_prep.features import FeatureSource, reduce_snippets
from data_prep.narratives import MeanWordVectorEncoder, read_narratives, video_narrative
from data_prep.text import tokenize, word_ids
from tea_apps import records_pair, video_inputs
from tea_jax import checkpointing, cli, inference, metrics
from tea_jax import workdir as workdir_files
from tea_jax.data.schema import data_path
from tea_jax.errors import InputError
from tea_jax.model.config import ModelConfig


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


def narrative_rows(config, items: list[tuple[float, str]], vectors_path: str, duration: float,
                   v_len: int, cache_dir: str | None) -> np.ndarray:
  """(v_len, narrative_dim) features of one video's (t, text) narratives, as build_records
  computes them (mean word vector per sentence, aligned to the snippets)."""
  words = sorted({t for _, text in items for t in tokenize(text)})
  index, vectors, _ = glove.read_vectors(vectors_path, words, dim=config.model.word_dim,
                                         cache_dir=cache_dir, progress=False)
  return video_narrative(items, MeanWordVectorEncoder(index, vectors), duration, v_len)


def video_narratives(narratives_path: str, video_id: str) -> list[tuple[float, str]]:
  """The (t, text) narratives of `video_id` in a narratives JSONL file."""
  narratives, _ = read_narratives(narratives_path)
  if video_id not in narratives:
    raise InputError(f"no narratives for video {video_id!r} in {narratives_path}")
  return narratives[video_id]


def data_settings(config) -> dict:
  """How the workdir's records were prepared: its config's data section, or for a workdir written
  by tea_jax.import_emb (no data section) EMB's own settings: at most max_positions snippets
  (mean-pooled) and query words."""
  data = config.get("data") or {}
  limit = config.model.max_positions
  return {"max_snippets": data.get("max_snippets", limit),
          "max_words": data.get("max_words", limit), "pooling": data.get("pooling", "mean")}


def make_batch(config, vocabulary: dict[str, int], video: np.ndarray, queries: list[str],
               narrative: np.ndarray | None = None) -> dict[str, np.ndarray]:
  """The batch `tea_jax.inference.forward` takes for each query in one video: `video` (v_len,
  video_dim) its snippet features reduced as the records are, `narrative` (v_len, narrative_dim)
  its aligned narrative rows (TEA models), the queries tokenised as the records were and mapped
  through `vocabulary` (tea_jax.workdir.read_vocabulary: unknown words are UNK)."""
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
  return {
      "video": np.repeat(video[None], n, axis=0),
      "narrative": np.repeat(narrative[None].astype(np.float32), n, axis=0),
      "video_mask": np.ones((n, v_len), np.float32),
      "word_ids": np.array([t + [0] * (words - len(t)) for t in ids], np.int32),
      "query_mask": np.array([[1.0] * len(t) + [0.0] * (words - len(t)) for t in ids], np.float32),
  }


def score_queries(config, variables, vocabulary: dict[str, int], video: np.ndarray,
                  queries: list[str], narrative: np.ndarray | None = None) -> dict[str, np.ndarray]:
  """start_prob, end_prob and highlight, each (n_queries, v_len), of each query in a video
  (make_batch's inputs)."""
  out = inference.forward(config, variables,
                          make_batch(config, vocabulary, video, queries, narrative))
  return {k: np.asarray(out[k]) for k in ("start_prob", "end_prob", "highlight")}


def moments_of(start_prob: np.ndarray, end_prob: np.ndarray, duration: float,
               top_k: int) -> list[dict]:
  """The `top_k` best moments of one query's (v_len,) probabilities, in seconds, best first."""
  v_len = len(start_prob)
  moments = []
  for i, j, p in metrics.top_spans(start_prob, end_prob, top_k):
    start_s, end_s = metrics.index_to_time(i, j, v_len, duration)
    moments.append({"start": round(float(start_s), 3), "end": round(float(end_s), 3),
                    "start_index": i, "end_index": j, "probability": p})
  return moments


def predict(config, variables, vocabulary: dict[str, int], video: np.ndarray, duration: float,
            queries: list[str], narrative: np.ndarray | None = None,
            top_k: int = 1) -> list[dict]:
  """The best `top_k` moments of each query in a video of `duration` seconds, given its snippet
  features `video` (v_len, video_dim), already reduced as the records are, and, for TEA models,
  its aligned `narrative` (v_len, narrative_dim). `variables` as checkpointing.restore_variables
  returns them, `vocabulary` as tea_jax.workdir.read_vocabulary does."""
  if duration <= 0:
    raise InputError(f"duration must be positive, got {duration}")
  scores = score_queries(config, variables, vocabulary, video, queries, narrative)
  return [{"query": query, "moments": moments_of(scores["start_prob"][q], scores["end_prob"][q],
                                                 duration, top_k)}
          for q, query in enumerate(queries)]


# ---------------------------------------------------------------------------------------------
# The command: models, the video as each input gives it, answers, output and plot.


@dataclasses.dataclass
class Model:
  """A workdir's model: config and vocabulary read at once, variables restored on demand."""

  workdir: str
  config: object
  vocabulary: dict[str, int]
  step: int | None = None
  variables: object = None

  @classmethod
  def read(cls, workdir: str, step: int | None = None) -> "Model":
    """The model of `workdir` (its config and vocabulary; variables not yet restored)."""
    return cls(workdir, workdir_files.read_config(workdir), workdir_files.read_vocabulary(workdir),
               step)

  @property
  def uses_narrative(self) -> bool:
    """Whether the model reads narratives (TEA) or not (EMB)."""
    return ModelConfig.from_config(self.config).uses_narrative

  @property
  def label(self) -> str:
    """The model's name on the plot: TEA or EMB, and the workdir's folder name."""
    kind = "TEA" if self.uses_narrative else "EMB"
    return f"{kind} ({os.path.basename(os.path.normpath(self.workdir))})"

  def restore(self):
    """The checkpoint's variables (the best one unless a step was asked for), restored once."""
    if self.variables is None:
      self.variables, self.step = checkpointing.restore_variables(self.workdir, self.step)
    return self.variables


@dataclasses.dataclass
class Source:
  """The video as the command's input gives it: raw (T, D) features (--features, --video) or a
  records pair (--split), its duration, narrative texts when known, and its file when known."""

  ids: dict
  duration: float
  queries: list[str]
  features: np.ndarray | None = None
  narratives: list[tuple[float, str]] | None = None
  pair: records_pair.Pair | None = None
  video_path: str | None = None
  truths: list[tuple[float, float]] | None = None
  cache_dir: str | None = None  # where the GloVe rows of the narratives' words are cached


def parse_args(argv):
  """The command's flags."""
  parser = argparse.ArgumentParser(prog="python -m tea_apps.predict",
                                   description=__doc__.split("\n")[0])
  parser.add_argument("--workdir", required=True, help="a trained or imported tea_jax workdir")
  parser.add_argument("--step", type=int, help="checkpoint step (default: the best)")
  parser.add_argument("--query", action="append", help="a sentence (repeatable)")
  parser.add_argument("--top-k", type=int, default=1, help="moments per query")
  source = parser.add_argument_group("the video (one of --video, --features, --split)")
  source.add_argument("--video", help="a video file (mp4, mkv, webm, ...)")
  source.add_argument("--features",
                      help="<video>.npy, or a folder of <video_id>.npy, or an HDF5 file")
  source.add_argument("--video-id", help="the video (default: the .npy file's name)")
  source.add_argument("--duration", type=float, help="video duration in seconds (--features)")
  source.add_argument("--split", help="a split of the workdir's records (with --pair-index)")
  source.add_argument("--pair-index", type=int, help="the pair's index in its split")
  text = parser.add_argument_group("narratives (TEA models)")
  text.add_argument("--narrator-model", help="local Hugging Face MLLM directory (--video)")
  text.add_argument("--narrator-backend", default="llava", help="llava, blip2 or hf")
  text.add_argument("--narrator-interval", type=float, default=1.0, help="seconds between frames")
  text.add_argument("--narrator-max-new-tokens", type=int, default=None,
                    help="cap of each caption (default: the narrate command's, 192)")
  text.add_argument("--narrator-preprocess", choices=("pad", "crop"),
                    help="frames padded to a square (LLaVA-1.5's, the llava default) or cropped")
  text.add_argument("--narrator-template", help="llava_v1 (the llava default), vicuna_v1 or hf")
  text.add_argument("--narrator-batch-size", type=int, default=16, help="frames per generate()")
  text.add_argument("--narrator-device", default="auto", help="auto, cpu, cuda, cuda:1")
  text.add_argument("--narratives", help="narratives JSONL instead of narrating")
  text.add_argument("--word-vectors", help="GloVe text file the records were built with")
  video = parser.add_argument_group("video files")
  video.add_argument("--i3d-weights", help="rgb_charades.pt or its converted .npz (--video)")
  video.add_argument("--i3d-batch-size", type=int, default=8, help="24-frame windows per call")
  video.add_argument("--i3d-precision", choices=("highest", "default"), default="highest")
  video.add_argument("--cache", "--cache-dir", dest="cache",
                     help="cache folder (default: <video>.tea_cache beside the video; GloVe rows "
                          "of --features are cached only when given)")
  video.add_argument("--videos", help="folder of <video_id>.mp4 (frames of --plot for --features "
                                      "and --split)")
  plot = parser.add_argument_group("the timeline picture")
  plot.add_argument("--plot", nargs="?", const="",
                    help="write a PNG (default name: timeline_<video or split_pair>.png)")
  plot.add_argument("--truth", nargs=2, type=float, action="append", metavar=("START", "END"),
                    help="the true moment in seconds (once, or once per query)")
  plot.add_argument("--compare-workdir", help="a second model drawn on the same timeline")
  plot.add_argument("--compare-step", type=int)
  return parser.parse_args(argv)


def check_args(args) -> None:
  """Contradictory or missing flags: one line each, before anything is loaded."""
  given = [flag for flag, value in (("--video", args.video), ("--features", args.features),
                                    ("--split", args.split)) if value]
  if len(given) != 1:
    raise InputError(f"give exactly one of --video, --features, --split (got {given or 'none'})")
  if args.top_k < 1:
    raise InputError(f"--top-k must be at least 1, got {args.top_k}")
  if args.split:
    if args.pair_index is None or args.query:
      raise InputError("--split takes --pair-index N and no --query (the pair's query is used)")
  elif not args.query:
    raise InputError("--query is required (repeatable)")
  if args.features and args.duration is None:
    raise InputError("--features needs --duration (seconds)")
  if args.video and not args.i3d_weights:
    raise InputError("--video needs --i3d-weights (rgb_charades.pt or a converted .npz)")
  if args.video and args.duration is not None:
    raise InputError("--duration is for --features: a video's duration is read from its file")
  if args.plot is not None and importlib.util.find_spec("matplotlib") is None:
    raise InputError("--plot needs matplotlib (pip install matplotlib==3.11.2)")
  check_truths(args)


def check_truths(args) -> None:
  """--truth: once (one query) or once per query, each START < END; not with --split (the
  records hold the pair's truth)."""
  if not args.truth:
    return
  if args.split:
    raise InputError("--truth is not for --split: the records hold the pair's true moment")
  if len(args.truth) not in (1, len(args.query)):
    raise InputError(f"--truth given {len(args.truth)} times for {len(args.query)} queries: give "
                     f"it once per query")
  for start, end in args.truth:
    if not 0 <= start < end:
      raise InputError(f"--truth {start} {end}: expected 0 <= START < END (seconds)")


def check_models(args, models: list[Model]) -> None:
  """What each model needs from the input: 1024-d I3D features for --video, narratives for TEA."""
  for model in models:
    c = model.config.model
    if args.video and c.video_dim != video_inputs.I3D_DIM:
      raise InputError(f"the model in {model.workdir} reads {c.video_dim}-d video features; "
                       f"--video computes {video_inputs.I3D_DIM}-d I3D features (use --features "
                       f"with features like its training data)")
    if model.uses_narrative and not args.split:
      if not (args.narratives or (args.video and args.narrator_model)):
        need = "--narrator-model" if args.video else "--narratives"
        raise InputError(f"the model in {model.workdir} reads narratives: pass {need} and "
                         f"--word-vectors")
      if not args.word_vectors:
        raise InputError(f"the model in {model.workdir} reads narratives: pass --word-vectors "
                         f"(the GloVe file of its records)")


def narrator_settings(args) -> video_inputs.NarratorSettings:
  """The --narrator-* flags."""
  return video_inputs.NarratorSettings(
      args.narrator_model, args.narrator_backend, args.narrator_interval,
      args.narrator_max_new_tokens, args.narrator_batch_size, args.narrator_device,
      args.narrator_preprocess, args.narrator_template)


def video_source(args, models: list[Model]) -> Source:
  """--video: I3D features and (when a model reads them, or a plot shows them) narration, cached."""
  cache = video_inputs.VideoCache.for_video(args.video, args.cache)
  features, duration = video_inputs.i3d_features(args.video, args.i3d_weights, cache,
                                                 args.i3d_batch_size, args.i3d_precision)
  narratives = None
  if args.narratives:
    narratives = video_narratives(args.narratives, args.video_id or _stem(args.video))
  elif args.narrator_model and (any(m.uses_narrative for m in models)
                                or args.plot is not None):
    narratives = video_inputs.narration(args.video, narrator_settings(args), cache)
  video_id = args.video_id or _stem(args.video)
  return Source(row_ids(video_id, args.video, duration), duration, args.query, features=features,
                narratives=narratives, video_path=args.video, truths=args.truth,
                cache_dir=os.path.join(cache.folder, "glove"))


def features_source(args) -> Source:
  """--features: a .npy, a folder of .npy or an HDF5 file, the duration given."""
  video_id = args.video_id or (_stem(args.features) if args.features.endswith(".npy") else None)
  if args.duration <= 0:
    raise InputError(f"--duration must be positive, got {args.duration}")
  narratives = video_narratives(args.narratives, video_id) if args.narratives else None
  video_path = _video_file(args.videos, video_id)
  return Source(row_ids(video_id, video_path, args.duration), args.duration, args.query,
                features=load_features(args.features, video_id), narratives=narratives,
                video_path=video_path, truths=args.truth, cache_dir=args.cache)


def pair_source(args, model: Model) -> Source:
  """--split: the pair as the records hold it; its truth; its narratives' texts when the data's
  narratives file is at hand (for the plot)."""
  pair = records_pair.read_pair(model.config, model.workdir, args.split, args.pair_index)
  narratives = None
  path = data_path(model.config.data, "narratives") if model.config.data.get("narratives") else None
  if path and os.path.isfile(path):
    narratives = read_narratives(path)[0].get(pair.video_id)
  video_path = _video_file(args.videos, pair.video_id)
  return Source(row_ids(pair.video_id, video_path, pair.duration, split=pair.split,
                        pair_index=pair.pair_index), pair.duration, [pair.query], pair=pair,
                narratives=narratives, video_path=video_path,
                truths=[(pair.start_time, pair.end_time)])


def row_ids(video_id: str | None, video_path: str | None, duration: float, **pair) -> dict:
  """What every output line starts with, whatever the input: the video's id, its file (None when
  not known), its duration, and for a records pair its split and index."""
  return {"video_id": video_id, "video": video_path, "duration": round(float(duration), 3),
          **pair}


def _stem(path: str) -> str:
  """A file's name without folder and extension."""
  return os.path.splitext(os.path.basename(path))[0]


def _video_file(folder: str | None, video_id: str | None) -> str | None:
  """The video file of `video_id` in `folder` (for the frame strip), if any."""
  if not folder or not video_id:
    return None
  from data_prep.frames import find_videos  # pylint: disable=import-outside-toplevel
  return find_videos(folder).get(video_id)


def model_inputs(model: Model, source: Source, args,
                 main: bool) -> tuple[np.ndarray, np.ndarray | None]:
  """The (v_len, video_dim) rows and (v_len, narrative_dim) narrative rows (None when the model
  reads none) that `model` reads for `source`, prepared as its records were."""
  if source.pair is not None:
    pair = source.pair
    if not main and model.config.get("data"):  # the compared model's own records
      pair = records_pair.read_pair(model.config, model.workdir, args.split, args.pair_index)
    return pair.video, pair.narrative if model.uses_narrative else None
  settings = data_settings(model.config)
  video = reduce_snippets(source.features, settings["max_snippets"], settings["pooling"])
  if not model.uses_narrative:
    return video, None
  narrative = narrative_rows(model.config, source.narratives, args.word_vectors, source.duration,
                             video.shape[0], source.cache_dir)
  return video, narrative


def answer(model: Model, source: Source, args, main: bool = True) -> list[dict]:
  """Each query's moments and curves (start_prob, end_prob, highlight) from `model`."""
  video, narrative = model_inputs(model, source, args, main)
  scores = score_queries(model.config, model.restore(), model.vocabulary, video, source.queries,
                         narrative)
  return [{"moments": moments_of(scores["start_prob"][q], scores["end_prob"][q], source.duration,
                                 args.top_k),
           **{k: scores[k][q] for k in ("start_prob", "end_prob", "highlight")}}
          for q in range(len(source.queries))]


def output_rows(source: Source, answers: list[list[dict]], models: list[Model]) -> list[dict]:
  """The JSON object of each query: its moments, and the truth and top-1 IoU when known, and the
  compared model's moments."""
  rows = []
  for q, query in enumerate(source.queries):
    row = {**source.ids, "query": query, "moments": answers[0][q]["moments"]}
    truth = _truth(source, q)
    if truth is not None:
      row["truth"] = {"start": round(truth[0], 3), "end": round(truth[1], 3)}
      row["iou"] = _iou(row["moments"][0], truth)
    if len(models) > 1:
      moments = answers[1][q]["moments"]
      row["compare"] = {"workdir": models[1].workdir, "moments": moments}
      if truth is not None:
        row["compare"]["iou"] = _iou(moments[0], truth)
    rows.append(row)
  return rows


def _truth(source: Source, q: int) -> tuple[float, float] | None:
  """The true moment of query q, if known."""
  if not source.truths:
    return None
  return tuple(source.truths[q if len(source.truths) > 1 else 0])


def _iou(moment: dict, truth) -> float:
  """IoU of a printed moment's seconds with the truth."""
  return round(float(metrics.iou(moment["start"], moment["end"], *truth)), 4)


def plot_answers(path: str, source: Source, answers: list[list[dict]],
                 models: list[Model]) -> None:
  """The timeline PNG of every query (tea_apps/timeline.py)."""
  from tea_apps import timeline  # pylint: disable=import-outside-toplevel
  panels = []
  for q, query in enumerate(source.queries):
    curves = [timeline.Curves(m.label, a[q]["start_prob"], a[q]["end_prob"], a[q]["highlight"],
                              a[q]["moments"]) for m, a in zip(models, answers)]
    panels.append(timeline.QueryPanel(query, curves[0], curves[1] if len(curves) > 1 else None,
                                      _truth(source, q)))
  frames = []
  if source.video_path:
    frames = video_inputs.frame_strip(source.video_path, source.duration)
  name = source.ids["video_id"]
  where = f"{source.ids['split']} pair {source.ids['pair_index']}: " if source.pair else ""
  compared = f" vs {models[1].label} (step {models[1].step})" if len(models) > 1 else ""
  title = (f"{where}{name} ({source.duration:.1f} s) - {models[0].label} (step "
           f"{models[0].step}){compared}")
  timeline.plot_timeline(path, source.duration, title, panels, frames, source.narratives or [])


def default_plot_path(args, source: Source) -> str:
  """--plot's file, or timeline_<video>.png / timeline_<split>_<index>.png without a name."""
  if args.plot:
    return args.plot
  if args.split:
    return f"timeline_{args.split}_{args.pair_index}.png"
  return f"timeline_{source.ids['video_id'] or 'video'}.png"


def run(args) -> tuple[list[dict], str | None]:
  """The command's work: the JSON rows, and the plot's path when one was written."""
  check_args(args)
  models = [Model.read(args.workdir, args.step)]
  if args.compare_workdir:
    models.append(Model.read(args.compare_workdir, args.compare_step))
  check_models(args, models)
  if args.video:
    source = video_source(args, models)
  elif args.features:
    source = features_source(args)
  else:
    source = pair_source(args, models[0])
  answers = [answer(model, source, args, main=k == 0) for k, model in enumerate(models)]
  rows = output_rows(source, answers, models)
  plot_path = None
  if args.plot is not None:
    plot_path = default_plot_path(args, source)
    plot_answers(plot_path, source, answers, models)
  return rows, plot_path


def main(argv=None) -> int:
  """The command; from the command line (argv None) the phases log their progress to stderr."""
  if argv is None:
    cli.setup_logging()
  args = parse_args(argv)
  status, result = cli.call_reporting(lambda: run(args))
  if status:
    return status
  rows, plot_path = result
  for row in rows:
    print(json.dumps(row))
  if plot_path:
    print(f"timeline written to {plot_path}", file=sys.stderr)
  return 0


if __name__ == "__main__":
  sys.exit(main())
