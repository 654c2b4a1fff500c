"""The web app: in a browser, ask a trained model about a video and browse its evaluated pairs.

    tea-jax-web --workdir runs/demo/tea [--compare-workdir runs/demo/emb] \\
        [--videos demo_data/videos] [--host 127.0.0.1] [--port 7860] \\
        [--i3d-weights rgb_charades.pt --narrator-model DIR --word-vectors glove.txt] [--cache DIR]

Ask: a video (one of --videos, or an upload) and queries, one per line -> the best moments of each
query in a table, the timeline picture of `tea-jax-predict --plot`, and a player that jumps to a
moment when its row is clicked. The answers are the predict command's: a question is turned into
its flags and run by tea_apps.predict.run with the Predictors the app keeps (one per workdir, for
the app's life), so a second question about a video costs one forward pass (the video's features
and narration are cached). A video whose name is a video id of the workdir's data (data.features)
is read from those features and the data's narratives, as `--features` reads them; any other video
goes through I3D (and for TEA models the narrator), as `--video` does.

Browse: the workdir's evaluated pairs per split (predictions_<split>.jsonl and metrics.json,
tea_jax/workdir.py): the metrics, a histogram of the pairs' IoU, the pairs filtered by IoU range
(with --compare-workdir, by which model did better) and a pair's timeline (`--split
--pair-index`), with frames when --videos holds its video.

The handlers are plain functions of an `App` (the tests call them directly); `build_blocks` lays
them out with Gradio, imported there only (the `app` extra). Bad input is one line in the page and
the app keeps serving. Local by default: another --host than 127.0.0.1 is served with a warning.
"""

import argparse
import dataclasses
import hashlib
import importlib.util
import logging
import os
import sys
import tempfile
from typing import Callable

import numpy as np

from data_prep.annotations import read_durations
from data_prep.features import FeatureSource
from data_prep.frames import find_videos
from tea_apps import predict
from tea_apps.api import Predictor
from tea_jax import cli
from tea_jax import workdir as workdir_files
from tea_jax.data.schema import data_path
from tea_jax.errors import InputError, UserError

log = logging.getLogger(__name__)

LOCAL_HOSTS = ("127.0.0.1", "localhost", "::1")
ASK_COLUMNS = ["query", "rank", "start (s)", "end (s)", "probability"]
METRIC_KEYS = (("R1@0.3", "r1@0.3"), ("R1@0.5", "r1@0.5"), ("R1@0.7", "r1@0.7"), ("mIoU", "miou"))
BETTER = ("all", "workdir better", "compared better", "same IoU")
SORTS = ("pair", "IoU, lowest first", "IoU, highest first", "IoU difference, largest first")
# Codecs a browser's <video> plays; other videos (the synthetic demo's MPEG-4 part 2) are copied.
BROWSER_CODECS = ("h264", "vp8", "vp9", "av1")


def no_progress(fraction: float, desc: str | None = None) -> None:
  """The progress callback of a handler called outside the page."""
  del fraction, desc


def parse_args(argv):
  """The command's flags."""
  parser = argparse.ArgumentParser(prog="tea-jax-web", description=__doc__.split("\n")[0])
  parser.add_argument("--workdir", required=True, help="a trained or imported tea_jax workdir")
  parser.add_argument("--compare-workdir", help="a second model, drawn and compared beside it")
  parser.add_argument("--videos", help="folder of <video_id>.mp4: videos to ask about, frames of "
                                       "the timelines")
  parser.add_argument("--host", default="127.0.0.1",
                      help="address to serve on (default: this machine only)")
  parser.add_argument("--port", type=int, default=7860)
  parser.add_argument("--top-k", type=int, default=3, help="moments per query at first (the page has a slider)")
  parser.add_argument("--i3d-weights", help="rgb_charades.pt or its .npz (videos not in the data)")
  parser.add_argument("--narrator-model", help="local MLLM directory (TEA, videos not in the data)")
  parser.add_argument("--word-vectors",
                      help="GloVe file of the records (default: the data's, when it is there)")
  parser.add_argument("--cache", help="cache folder (default: <video>.tea_cache beside a video)")
  return parser.parse_args(argv)


@dataclasses.dataclass
class App:
  """What the handlers share: the command's flags, the Predictors (the workdir's, then the
  compared one's), the folder of the app's pictures and browser copies, and the videos found."""

  args: argparse.Namespace
  predictors: list[Predictor]
  out_dir: str
  videos: dict[str, str]

  @property
  def data(self):
    """The main workdir's data section (None for an import without one)."""
    return self.predictors[0].config.get("data")

  def data_file(self, name: str) -> str | None:
    """config.data.<name> when it is set and exists."""
    if not self.data or not self.data.get(name):
      return None
    path = data_path(self.data, name)
    return path if os.path.exists(path) else None


def model_argv(args) -> list[str]:
  """The predict command's flags that say how the models read videos."""
  argv = []
  for flag in ("compare_workdir", "i3d_weights", "narrator_model", "word_vectors", "cache",
               "videos"):
    if getattr(args, flag):
      argv += [f"--{flag.replace('_', '-')}", getattr(args, flag)]
  return ["--workdir", args.workdir] + argv


def make_app(args, out_dir: str | None = None) -> App:
  """The App of the flags: its Predictors built (checkpoints are restored on first use)."""
  if args.videos and not os.path.isdir(args.videos):
    raise FileNotFoundError(f"--videos {args.videos}: no such folder")
  if not args.word_vectors:  # a TEA model embeds narratives with its records' word vectors
    config = workdir_files.read_config(args.workdir)
    if config.get("data") and config.data.get("word_vectors"):
      path = data_path(config.data, "word_vectors")
      args.word_vectors = path if os.path.isfile(path) else None
  flags = predict.parse_args(model_argv(args))
  predictors = [predict.predictor_of(flags, args.workdir, None)]
  if args.compare_workdir:
    predictors.append(predict.predictor_of(flags, args.compare_workdir, None))
  out_dir = out_dir or tempfile.mkdtemp(prefix="tea_jax_web_")
  videos = find_videos(args.videos) if args.videos else {}
  log.info("web app of %s%s: %d videos under --videos", args.workdir,
           f" vs {args.compare_workdir}" if args.compare_workdir else "", len(videos))
  return App(args, predictors, out_dir, videos)


# ---------------------------------------------------------------------------------------------
# Ask


@dataclasses.dataclass
class Answer:
  """What the Ask tab shows: a row per moment (ASK_COLUMNS), the timeline PNG, the video as the
  browser plays it, and the predict command's JSON rows (one per query)."""

  rows: list[list]
  timeline: str
  video: str
  results: list[dict]


def split_queries(text: str | None) -> list[str]:
  """The queries of the text box, one per non-empty line."""
  queries = [line.strip() for line in (text or "").splitlines() if line.strip()]
  if not queries:
    raise InputError("type a query (one per line)")
  return queries


def check_decodable(path: str) -> None:
  """A video file PyAV can decode a frame of, or one line naming it."""
  import av  # pylint: disable=import-outside-toplevel
  try:
    with av.open(path) as container:
      next(container.decode(video=0))
  except (av.FFmpegError, OSError, IndexError, StopIteration, ValueError) as e:
    reason = str(e).splitlines()[0] if str(e) else type(e).__name__
    raise InputError(f"cannot decode {os.path.basename(path)} as a video ({reason})") from None


def video_argv(app: App, video: str) -> list[str]:
  """How the predict command reads `video`: a data video (its name is a video id of the data's
  features) from those features, its data duration and narratives; any other as a video file."""
  video_id = os.path.splitext(os.path.basename(video))[0]
  features = app.data_file("features")
  if features:
    source = FeatureSource(features)
    try:
      known = video_id in source
    finally:
      source.close()
    if known:
      argv = ["--features", features, "--video-id", video_id,
              "--duration", str(video_duration(app, video_id, video))]
      narratives = app.data_file("narratives")
      return argv + (["--narratives", narratives] if narratives else [])
  return ["--video", video, "--video-id", video_id]


def video_duration(app: App, video_id: str, video: str) -> float:
  """A data video's duration: the annotations' (the records' and evaluation's), else its file's."""
  durations = app.data_file("durations")
  if durations:
    known = read_durations(durations)
    if video_id in known:
      return known[video_id]
  from data_prep.frames import duration_seconds  # pylint: disable=import-outside-toplevel
  seconds = duration_seconds(video)
  if seconds <= 0:
    raise InputError(f"the duration of {os.path.basename(video)} is unknown")
  return seconds


def pick_video(app: App, video_id: str | None, upload: str | None) -> str:
  """The file of the question: the upload if there is one, else the chosen video of --videos."""
  if upload:
    return upload
  if video_id:
    if video_id not in app.videos:
      raise InputError(f"no video {video_id!r} under --videos {app.args.videos}")
    return app.videos[video_id]
  where = f"one of --videos {app.args.videos}" if app.videos else "a video file"
  raise InputError(f"pick {where}, or upload one")


def ask(app: App, video: str, queries_text: str, top_k: int = 3,
        progress: Callable = no_progress) -> Answer:
  """The Ask tab's answer: the best `top_k` moments of each query in `video` by the workdir's
  model (and the compared one's on the timeline), as `tea-jax-predict --plot` gives them."""
  queries = split_queries(queries_text)
  top_k = int(top_k)
  progress(0.05, desc="reading the video")
  check_decodable(video)
  timeline = os.path.join(app.out_dir, f"ask_{_digest(video, *queries, top_k)}.png")
  argv = model_argv(app.args) + video_argv(app, video) + ["--top-k", str(top_k),
                                                          "--plot", timeline]
  for query in queries:
    argv += ["--query", query]
  progress(0.2, desc="asking the model (a new video's features and narration take longest)")
  results, _ = predict.run(predict.parse_args(argv), app.predictors)
  progress(0.9, desc="preparing the player")
  rows = [[result["query"], rank + 1, m["start"], m["end"], round(m["probability"], 4)]
          for result in results for rank, m in enumerate(result["moments"])]
  return Answer(rows, timeline, playable(video, app.out_dir), results)


def seek_start(row: list) -> float:
  """The second a clicked moment row starts at (the player jumps there)."""
  return float(row[ASK_COLUMNS.index("start (s)")])


def playable(video: str, out_dir: str) -> str:
  """The video as a browser plays it: itself when its codec is one browsers decode, else an H.264
  copy in `out_dir` (made once per file and modification time)."""
  import av  # pylint: disable=import-outside-toplevel
  with av.open(video) as container:
    codec = container.streams.video[0].codec_context.name
  if codec in BROWSER_CODECS and video.lower().endswith((".mp4", ".webm")):
    return video
  copy = os.path.join(out_dir, f"{os.path.splitext(os.path.basename(video))[0]}_"
                               f"{_digest(video, os.path.getmtime(video))}.mp4")
  if not os.path.isfile(copy):
    _h264_copy(video, copy)
  return copy


def _h264_copy(video: str, copy: str) -> None:
  """Re-encodes `video` as H.264 at its frame rate (even width and height, as yuv420p needs)."""
  import av  # pylint: disable=import-outside-toplevel
  partial = copy + ".partial.mp4"
  with av.open(video) as source, av.open(partial, "w") as target:
    stream = source.streams.video[0]
    rate = stream.average_rate or 24
    out = target.add_stream("libx264", rate=rate)
    out.width, out.height = stream.width // 2 * 2, stream.height // 2 * 2
    out.pix_fmt = "yuv420p"
    for index, frame in enumerate(source.decode(stream)):
      frame = frame.reformat(out.width, out.height, "yuv420p")
      frame.pts, frame.time_base = index, 1 / rate
      for packet in out.encode(frame):
        target.mux(packet)
    for packet in out.encode():
      target.mux(packet)
  os.replace(partial, copy)


def _digest(*parts) -> str:
  """A short name for a file made from `parts`."""
  return hashlib.sha1(repr(parts).encode()).hexdigest()[:12]


# ---------------------------------------------------------------------------------------------
# Browse


def evaluated_splits(app: App) -> list[str]:
  """The splits of the workdir's final evaluation that have predictions, in its config's order
  (data.eval_splits: test first; then metrics.json's and any other predictions file), or one line
  saying there are none."""
  workdir = app.args.workdir
  names = list(app.data.get("eval_splits", ())) if app.data else []
  if os.path.isfile(os.path.join(workdir, workdir_files.METRICS_FILE)):
    names += list(workdir_files.read_metrics(workdir).get("splits", {}))
  prefix, suffix = "predictions_", ".jsonl"
  names += sorted(n[len(prefix):-len(suffix)] for n in os.listdir(workdir)
                  if n.startswith(prefix) and n.endswith(suffix))
  found = [s for s in dict.fromkeys(names)
           if os.path.isfile(workdir_files.predictions_path(workdir, s))]
  if not found:
    raise InputError(f"no evaluated predictions in {workdir} (predictions_<split>.jsonl): "
                     f"evaluate it first (python -m tea_jax.main --mode eval ...)")
  return found


def summary_rows(app: App, split: str) -> list[dict]:
  """Per model, the split's metrics as metrics.json holds them: protocol, checkpoint, R1@0.3/0.5/
  0.7, mIoU, pairs evaluated of those annotated."""
  rows = []
  for predictor in app.predictors:
    path = os.path.join(predictor.workdir, workdir_files.METRICS_FILE)
    if not os.path.isfile(path):
      continue
    metrics = workdir_files.read_metrics(predictor.workdir)
    split_metrics = metrics.get("splits", {}).get(split)
    if split_metrics is None:
      continue
    pairs = split_metrics.get("queries", {})
    row = {"model": predictor.label, "protocol": metrics.get("protocol", "val"),
           "step": split_metrics.get("step", metrics.get("step")),
           "evaluated": pairs.get("evaluated", split_metrics.get("count")),
           "annotated": pairs.get("annotated")}
    row.update({name: split_metrics[key] for name, key in METRIC_KEYS})
    rows.append(row)
  if not rows:
    raise InputError(f"{app.args.workdir}/metrics.json has no split {split!r}")
  return rows


def summary_markdown(rows: list[dict], split: str) -> str:
  """The summary as a Markdown table (metrics in percent, two decimals)."""
  names = [name for name, _ in METRIC_KEYS]
  heads = [name.replace("@", "&#64;") for name in names]  # not an e-mail address to link
  lines = [f"### {split}", "",
           "| model | " + " | ".join(heads) + " | pairs evaluated / annotated | protocol | step |",
           "|" + " --- |" * (len(names) + 4)]
  for row in rows:
    cells = [row["model"]] + [f"{row[name]:.2f}" for name in names]
    cells += [f"{row['evaluated']} / {row['annotated']}", row["protocol"], str(row["step"])]
    lines.append("| " + " | ".join(cells) + " |")
  return "\n".join(lines)


def split_pairs(app: App, split: str) -> list[dict]:
  """The split's evaluated pairs, and with a compared model that has predictions of the split its
  IoU on the same pair and which model did better."""
  pairs = []
  for row in workdir_files.read_predictions(app.args.workdir, split):
    pairs.append({key: row[key] for key in ("pair_index", "video_id", "query", "pred_start",
                                            "pred_end", "true_start", "true_end", "iou")})
  compared = app.args.compare_workdir
  if compared and os.path.isfile(workdir_files.predictions_path(compared, split)):
    other = {row["pair_index"]: row["iou"]
             for row in workdir_files.read_predictions(compared, split)}
    for pair in pairs:
      iou = other.get(pair["pair_index"])
      pair["compare_iou"] = iou
      pair["better"] = (None if iou is None else "workdir" if pair["iou"] > iou
                        else "compared" if iou > pair["iou"] else "same")
  return pairs


def filter_pairs(pairs: list[dict], low: float = 0.0, high: float = 1.0, better: str = "all",
                 sort: str = "pair") -> list[dict]:
  """The pairs whose IoU is in [low, high] and (with a compared model) that `better` keeps, in
  the `sort` order (SORTS)."""
  if low > high:
    raise InputError(f"the IoU range is empty: from {low} to {high}")
  if better not in BETTER:
    raise InputError(f"unknown filter {better!r}: one of {', '.join(BETTER)}")
  wanted = {"workdir better": "workdir", "compared better": "compared", "same IoU": "same"}
  kept = [p for p in pairs if low <= p["iou"] <= high
          and (better == "all" or p.get("better") == wanted[better])]
  keys = {"pair": lambda p: p["pair_index"], SORTS[1]: lambda p: (p["iou"], p["pair_index"]),
          SORTS[2]: lambda p: (-p["iou"], p["pair_index"]),
          SORTS[3]: lambda p: (-abs(p["iou"] - (p.get("compare_iou") or 0.0)), p["pair_index"])}
  if sort not in keys:
    raise InputError(f"unknown order {sort!r}: one of {', '.join(SORTS)}")
  return sorted(kept, key=keys[sort])


def pair_columns(compare: bool) -> list[str]:
  """The columns of the pairs table."""
  columns = ["pair", "video", "query", "predicted", "true", "IoU"]
  return columns + (["compared IoU", "better"] if compare else [])


def pair_table(pairs: list[dict], compare: bool) -> list[list]:
  """The pairs as table rows (pair_columns)."""
  rows = []
  for p in pairs:
    row = [p["pair_index"], p["video_id"], p["query"],
           f"{p['pred_start']:.2f}-{p['pred_end']:.2f}",
           f"{p['true_start']:.2f}-{p['true_end']:.2f}", round(p["iou"], 4)]
    if compare:
      iou = p.get("compare_iou")
      row += [None if iou is None else round(iou, 4), p.get("better")]
    rows.append(row)
  return rows


def iou_histogram(app: App, split: str, pairs: list[dict], bins: int = 10
                  ) -> tuple[np.ndarray, str]:
  """The counts of the pairs' IoU in `bins` equal bins of [0, 1] and their picture (with a
  compared model, its counts as an outline)."""
  counts, edges = np.histogram([p["iou"] for p in pairs], bins=bins, range=(0.0, 1.0))
  import matplotlib  # pylint: disable=import-outside-toplevel
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt  # pylint: disable=import-outside-toplevel
  fig, ax = plt.subplots(figsize=(6, 3))
  ax.stairs(counts, edges, fill=True, alpha=0.6, label=app.predictors[0].label)
  compared = [p["compare_iou"] for p in pairs if p.get("compare_iou") is not None]
  if len(app.predictors) > 1 and compared:
    other, _ = np.histogram(compared, bins=bins, range=(0.0, 1.0))
    ax.stairs(other, edges, linewidth=1.6, color="k", label=app.predictors[1].label)
  ax.set_xlabel("IoU of the top moment with the truth")
  ax.set_ylabel("pairs")
  ax.set_title(f"{split}: {len(pairs)} pairs", fontsize=10)
  ax.legend(fontsize=8)
  path = os.path.join(app.out_dir, f"histogram_{_digest(app.args.workdir, split, bins)}.png")
  fig.savefig(path, format="png", dpi=100, bbox_inches="tight")
  plt.close(fig)
  return counts, path


def pair_timeline(app: App, split: str, pair_index: int, progress: Callable = no_progress
                  ) -> tuple[str, dict]:
  """The timeline of one evaluated pair (`tea-jax-predict --split --pair-index --plot`), with
  frames when --videos holds its video; and the predict command's row of it."""
  progress(0.1, desc=f"asking the model about {split} pair {pair_index}")
  timeline = os.path.join(app.out_dir, f"pair_{_digest(split, pair_index)}.png")
  argv = model_argv(app.args) + ["--split", split, "--pair-index", str(int(pair_index)),
                                 "--top-k", str(app.args.top_k), "--plot", timeline]
  (result,), _ = predict.run(predict.parse_args(argv), app.predictors)
  return timeline, result


# ---------------------------------------------------------------------------------------------
# The page


def build_blocks(app: App):
  """The two tabs laid out with Gradio, each event a call of a handler above; bad input is shown
  as one warning and one status line, and the app keeps serving."""
  import gradio as gr  # pylint: disable=import-outside-toplevel
  compare = len(app.predictors) > 1

  def shown(error: Exception) -> str:
    """A bad input's line, as a toast and as the tab's status."""
    gr.Warning(str(error))
    return f"**{error}**"

  def on_ask(video_id, upload, queries, top_k, progress=gr.Progress()):
    try:
      answer = ask(app, pick_video(app, video_id, upload), queries, top_k, progress)
    except (UserError, FileNotFoundError) as e:
      return None, None, None, shown(e)
    count = len(answer.results)
    return (answer.rows, answer.timeline, answer.video,
            f"{len(answer.rows)} moments of {count} quer{'y' if count == 1 else 'ies'}: click "
            f"a row to play its moment")

  def on_moment(evt: gr.SelectData):
    return seek_start(evt.row_value)

  def on_split(split, low, high, better, sort, progress=gr.Progress()):
    try:
      progress(0.1, desc=f"reading the predictions of {split}")
      pairs = split_pairs(app, split)
      summary = summary_markdown(summary_rows(app, split), split)
      _, histogram = iou_histogram(app, split, pairs)
      rows = pair_table(filter_pairs(pairs, low, high, better, sort), compare)
    except (UserError, FileNotFoundError) as e:
      return "", None, None, shown(e)
    return summary, histogram, rows, f"{len(rows)} of {len(pairs)} pairs shown"

  def on_filter(split, low, high, better, sort):
    try:
      pairs = split_pairs(app, split)  # read again: a small file, and nothing kept per user
      rows = pair_table(filter_pairs(pairs, low, high, better, sort), compare)
    except (UserError, FileNotFoundError) as e:
      return None, shown(e)
    return rows, f"{len(rows)} of {len(pairs)} pairs shown"

  def on_pair(split, evt: gr.SelectData, progress=gr.Progress()):
    try:
      timeline, _ = pair_timeline(app, split, int(evt.row_value[0]), progress)
    except (UserError, FileNotFoundError) as e:
      return None, shown(e)
    return timeline, f"timeline of {split} pair {evt.row_value[0]}"

  try:
    splits, browse_note = evaluated_splits(app), ""
  except (UserError, FileNotFoundError) as e:
    splits, browse_note = [], f"**{e}**"
  title = " vs ".join(p.label for p in app.predictors)
  with gr.Blocks(title=f"tea_jax: {title}", analytics_enabled=False) as blocks:
    gr.Markdown(f"## tea_jax - {title}")
    with gr.Tabs():
      with gr.Tab("Ask", id="ask"):
        with gr.Row():
          with gr.Column(scale=1):
            video_id = gr.Dropdown(sorted(app.videos), label="a video under --videos",
                                   value=None, elem_id="ask-video-id")
            upload = gr.File(label="or upload a video", type="filepath", elem_id="ask-upload")
            queries = gr.Textbox(label="queries, one per line", lines=3, elem_id="ask-queries")
            top_k = gr.Slider(1, 10, value=app.args.top_k, step=1, label="moments per query")
            button = gr.Button("Ask", variant="primary", elem_id="ask-button")
            ask_status = gr.Markdown(elem_id="ask-status")
          with gr.Column(scale=1):
            player = gr.Video(label="video", interactive=False, elem_id="ask-player")
            seek = gr.Number(label="playing from (s)", interactive=False, elem_id="ask-seek")
        moments = gr.Dataframe(headers=ASK_COLUMNS, interactive=False, elem_id="ask-moments",
                               label="moments (click one to play it)")
        ask_timeline = gr.Image(label="timeline", type="filepath", elem_id="ask-timeline")
        button.click(on_ask, [video_id, upload, queries, top_k],
                     [moments, ask_timeline, player, ask_status])
        # The player is the browser's <video>: jumping is done there, after the server's answer.
        moments.select(on_moment, None, seek).then(
            None, seek, None,
            js="(t) => { const v = document.querySelector('#ask-player video');"
               " if (v && t !== null) { v.currentTime = t; v.play().catch(() => {}); } }")
      with gr.Tab("Browse", id="browse"):
        with gr.Row():
          split = gr.Dropdown(splits, value=splits[0] if splits else None, label="split",
                              elem_id="browse-split")
          low = gr.Slider(0.0, 1.0, value=0.0, step=0.05, label="IoU from")
          high = gr.Slider(0.0, 1.0, value=1.0, step=0.05, label="IoU to")
          better = gr.Radio(list(BETTER), value="all", label="which model did better",
                            visible=compare)
          sort = gr.Dropdown(list(SORTS), value="pair", label="order")
        browse_status = gr.Markdown(browse_note, elem_id="browse-status")
        with gr.Row():
          with gr.Column(scale=3):
            summary = gr.Markdown(elem_id="browse-summary")
          with gr.Column(scale=2):
            histogram = gr.Image(label="IoU histogram", type="filepath",
                                 elem_id="browse-histogram")
        pairs_table = gr.Dataframe(headers=pair_columns(compare), interactive=False,
                                   elem_id="browse-pairs",
                                   label="pairs (click one for its timeline)")
        pair_picture = gr.Image(label="pair timeline", type="filepath", elem_id="browse-timeline")
        controls = [low, high, better, sort]
        split.change(on_split, [split] + controls,
                     [summary, histogram, pairs_table, browse_status])
        for control in controls:
          control.change(on_filter, [split] + controls, [pairs_table, browse_status])
        pairs_table.select(on_pair, split, [pair_picture, browse_status])
        if splits:
          blocks.load(on_split, [split] + controls,
                      [summary, histogram, pairs_table, browse_status])
  return blocks


def serve(app: App, host: str = "127.0.0.1", port: int = 7860, block: bool = True):
  """Serves the page on host:port (another host than this machine's own with a warning); with
  `block` False returns the running Blocks (its close() stops the server)."""
  if host not in LOCAL_HOSTS:
    log.warning("serving on %s:%d: anyone who can reach this machine there can use the app and "
                "read the workdir's predictions (the default, 127.0.0.1, is this machine only)",
                host, port)
  blocks = build_blocks(app)
  blocks.queue(default_concurrency_limit=1)  # one question at a time: the models are shared
  allowed = [app.out_dir] + ([os.path.abspath(app.args.videos)] if app.args.videos else [])
  log.info("serving http://%s:%d", host, port)
  blocks.launch(server_name=host, server_port=port, prevent_thread_lock=not block,
                allowed_paths=allowed, quiet=not block, show_error=True)
  return blocks


def main(argv=None) -> int:
  """The command; bad flags or workdirs end it after one line (exit status 2)."""
  if argv is None:
    cli.setup_logging()
  args = parse_args(argv)

  def start() -> App:
    """The App, once Gradio is known to be there (the handlers do not need it)."""
    if importlib.util.find_spec("gradio") is None:
      raise InputError("the web app needs Gradio: pip install 'tea_jax[app]' (gradio==6.31.0)")
    return make_app(args)

  status, app = cli.call_reporting(start)
  if status:
    return status
  serve(app, args.host, args.port)
  return 0


if __name__ == "__main__":
  sys.exit(main())
