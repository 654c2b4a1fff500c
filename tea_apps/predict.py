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

The work is tea_apps.api's (`Predictor`): this command reads its flags, builds one Predictor per
workdir and prints their answers, one JSON object per query: the best `--top-k` moments (start and
end seconds, snippet indices, probability), best first, with the truth and the top moment's IoU
when known. Inputs are prepared exactly as data_prep.build_records prepares the records, a video
file's I3D features and narration are cached (tea_apps/video_inputs.py), and a video longer than
the model's snippet budget is searched in sliding windows at the training snippet rate
(`--long auto|windows|pool`, tea_apps/long_video.py). `--plot` draws the timeline of the answer
(tea_apps/timeline.py). A workdir written by tea_jax.import_emb needs its vocabulary (`--words`
at import).
"""

import argparse
import dataclasses
import importlib.util
import json
import os
import sys
from typing import Callable

import numpy as np

from data_prep.features import FeatureSource
from data_prep.narratives import read_narratives
from tea_apps import long_video, records_pair, video_inputs
from tea_apps.api import Predictor, QueryResult
from tea_jax import cli, metrics
from tea_jax.data.schema import data_path
from tea_jax.errors import InputError


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


def video_narratives(narratives_path: str, video_id: str) -> list[tuple[float, str]]:
  """The (t, text) narratives of `video_id` in a narratives JSONL file."""
  narratives, _ = read_narratives(narratives_path)
  if video_id not in narratives:
    raise InputError(f"no narratives for video {video_id!r} in {narratives_path}")
  return narratives[video_id]


# ---------------------------------------------------------------------------------------------
# The command: flags, one Predictor per workdir, the video as each input gives it, output and plot.


@dataclasses.dataclass
class Source:
  """The video as the command's input gives it: its output ids, duration and queries; how each
  model is asked about it (`ask(predictor, main)` -> its QueryResults); the (t, text) narratives
  drawn on the plot; its file and true moments when known."""

  ids: dict
  duration: float
  queries: list[str]
  ask: Callable[[Predictor, bool], list[QueryResult]]
  narratives: list[tuple[float, str]] | None = None
  video_path: str | None = None
  truths: list[tuple[float, float]] | None = None
  pair: records_pair.Pair | None = None


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
  long = parser.add_argument_group(
      "videos longer than the model's snippet budget (data.max_snippets; tea_apps/long_video.py)")
  long.add_argument("--long", choices=long_video.MODES, default="auto",
                    help="windows: sliding windows at the training snippet rate, their moments "
                         "merged by NMS; pool: the whole video reduced to max_snippets (as the "
                         "records are); auto: windows when pooling would make snippets coarser "
                         "than training's")
  long.add_argument("--window", type=int,
                    help="snippets per window (default: the longest training video)")
  long.add_argument("--stride", type=int, help="snippets between windows (default: window / 2)")
  long.add_argument("--snippet-seconds", type=float,
                    help="seconds per snippet of the windows (default: the training records' "
                         "median; needed for a workdir without records, e.g. an import)")
  long.add_argument("--nms-iou", type=float, default=0.5,
                    help="a window's moment overlapping a better one by more IoU is dropped")
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


def check_models(args, predictors: list[Predictor]) -> None:
  """What each model needs from the flags: 1024-d I3D features for --video, narratives for TEA."""
  for predictor in predictors:
    if args.video:
      predictor.check_video_files()
    if predictor.uses_narrative and not args.split:
      if not (args.narratives or (args.video and args.narrator_model)):
        need = "--narrator-model" if args.video else "--narratives"
        raise InputError(f"the model in {predictor.workdir} reads narratives: pass {need} and "
                         f"--word-vectors")
      if not args.word_vectors:
        raise InputError(f"the model in {predictor.workdir} reads narratives: pass "
                         f"--word-vectors (the GloVe file of its records)")


def predictor_of(args, workdir: str, step: int | None) -> Predictor:
  """The Predictor of a workdir with the command's flags."""
  return Predictor.from_workdir(
      workdir, step, i3d_weights=args.i3d_weights, narrator_model=args.narrator_model,
      word_vectors=args.word_vectors, cache_dir=args.cache, long=args.long, window=args.window,
      stride=args.stride, snippet_seconds=args.snippet_seconds, nms_iou=args.nms_iou,
      i3d_batch_size=args.i3d_batch_size, i3d_precision=args.i3d_precision,
      narrator_backend=args.narrator_backend, narrator_interval=args.narrator_interval,
      narrator_max_new_tokens=args.narrator_max_new_tokens,
      narrator_batch_size=args.narrator_batch_size, narrator_device=args.narrator_device,
      narrator_preprocess=args.narrator_preprocess, narrator_template=args.narrator_template)


def video_source(args, predictors: list[Predictor]) -> Source:
  """--video: I3D features first (a video that cannot be decoded leaves nothing in the cache),
  then the narration when a model reads it or the plot shows it (both cached)."""
  _, duration = predictors[0].video_features(args.video)
  video_id = args.video_id or _stem(args.video)
  narratives = None
  if args.narratives:
    narratives = video_narratives(args.narratives, video_id)
  elif args.narrator_model and (any(p.uses_narrative for p in predictors)
                                or args.plot is not None):
    narratives = predictors[0].narratives(args.video)

  def ask(predictor: Predictor, main: bool) -> list[QueryResult]:
    """The video's answer (its features and narration read back from the cache)."""
    del main
    return predictor.predict(args.video, args.query, args.top_k, narratives=narratives)

  return Source(row_ids(video_id, args.video, duration), duration, args.query, ask,
                narratives=narratives, video_path=args.video, truths=args.truth)


def features_source(args) -> Source:
  """--features: a .npy, a folder of .npy or an HDF5 file, the duration given."""
  video_id = args.video_id or (_stem(args.features) if args.features.endswith(".npy") else None)
  if args.duration <= 0:
    raise InputError(f"--duration must be positive, got {args.duration}")
  narratives = video_narratives(args.narratives, video_id) if args.narratives else None
  features = load_features(args.features, video_id)

  def ask(predictor: Predictor, main: bool) -> list[QueryResult]:
    """The answer from the features file."""
    del main
    return predictor.predict_features(features, args.duration, args.query, narratives,
                                      args.top_k)

  video_path = _video_file(args.videos, video_id)
  return Source(row_ids(video_id, video_path, args.duration), args.duration, args.query, ask,
                narratives=narratives, video_path=video_path, truths=args.truth)


def pair_source(args, predictor: Predictor) -> Source:
  """--split: the pair as the records hold it; its truth; its narratives' texts when the data's
  narratives file is at hand (for the plot)."""
  config = predictor.config
  pair = records_pair.read_pair(config, predictor.workdir, args.split, args.pair_index)
  narratives = None
  path = data_path(config.data, "narratives") if config.data.get("narratives") else None
  if path and os.path.isfile(path):
    narratives = read_narratives(path)[0].get(pair.video_id)

  def ask(other: Predictor, main: bool) -> list[QueryResult]:
    """The pair's answer; a compared model with records reads its own records' copy."""
    own = pair
    if not main and other.config.get("data"):
      own = records_pair.read_pair(other.config, other.workdir, args.split, args.pair_index)
    return other.predict_features(own.video, own.duration, [own.query], own.narrative,
                                  args.top_k)

  video_path = _video_file(args.videos, pair.video_id)
  return Source(row_ids(pair.video_id, video_path, pair.duration, split=pair.split,
                        pair_index=pair.pair_index), pair.duration, [pair.query], ask,
                narratives=narratives, video_path=video_path,
                truths=[(pair.start_time, pair.end_time)], pair=pair)


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


def output_rows(source: Source, answers: list[list[QueryResult]],
                predictors: list[Predictor]) -> list[dict]:
  """The JSON object of each query: its moments, and the truth and top-1 IoU when known, and the
  compared model's moments."""
  rows = []
  for q, query in enumerate(source.queries):
    row = {**source.ids, "query": query,
           "moments": [m.to_dict() for m in answers[0][q].moments]}
    truth = _truth(source, q)
    if truth is not None:
      row["truth"] = {"start": round(truth[0], 3), "end": round(truth[1], 3)}
      row["iou"] = _iou(row["moments"][0], truth)
    if len(predictors) > 1:
      moments = [m.to_dict() for m in answers[1][q].moments]
      row["compare"] = {"workdir": predictors[1].workdir, "moments": moments}
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


def plot_answers(path: str, source: Source, answers: list[list[QueryResult]],
                 predictors: list[Predictor]) -> None:
  """The timeline PNG of every query (tea_apps/timeline.py), over the whole video."""
  from tea_apps import timeline  # pylint: disable=import-outside-toplevel
  panels = []
  for q, query in enumerate(source.queries):
    curves = [timeline.Curves(p.label, a[q].start_prob, a[q].end_prob, a[q].highlight,
                              [m.to_dict() for m in a[q].moments])
              for p, a in zip(predictors, answers)]
    panels.append(timeline.QueryPanel(query, curves[0], curves[1] if len(curves) > 1 else None,
                                      _truth(source, q)))
  frames = []
  if source.video_path:
    frames = video_inputs.frame_strip(source.video_path, source.duration)
  name = source.ids["video_id"]
  where = f"{source.ids['split']} pair {source.ids['pair_index']}: " if source.pair else ""
  compared = (f" vs {predictors[1].label} (step {predictors[1].step})"
              if len(predictors) > 1 else "")
  title = (f"{where}{name} ({source.duration:.1f} s) - {predictors[0].label} (step "
           f"{predictors[0].step}){compared}")
  timeline.plot_timeline(path, source.duration, title, panels, frames, source.narratives or [])


def default_plot_path(args, source: Source) -> str:
  """--plot's file, or timeline_<video>.png / timeline_<split>_<index>.png without a name."""
  if args.plot:
    return args.plot
  if args.split:
    return f"timeline_{args.split}_{args.pair_index}.png"
  return f"timeline_{source.ids['video_id'] or 'video'}.png"


def run(args, predictors: list[Predictor] | None = None) -> tuple[list[dict], str | None]:
  """The command's work: the JSON rows, and the plot's path when one was written. `predictors`
  (the workdir's, then the compared one's) are the flags' when not given: the web app passes the
  ones it keeps, so that their restored checkpoints and compiled forwards serve every question."""
  check_args(args)
  if predictors is None:
    predictors = [predictor_of(args, args.workdir, args.step)]
    if args.compare_workdir:
      predictors.append(predictor_of(args, args.compare_workdir, args.compare_step))
  check_models(args, predictors)
  if args.video:
    source = video_source(args, predictors)
  elif args.features:
    source = features_source(args)
  else:
    source = pair_source(args, predictors[0])
  answers = [source.ask(predictor, k == 0) for k, predictor in enumerate(predictors)]
  rows = output_rows(source, answers, predictors)
  plot_path = None
  if args.plot is not None:
    plot_path = default_plot_path(args, source)
    plot_answers(plot_path, source, answers, predictors)
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
