"""Videos longer than a model's snippet budget (data.max_snippets, 128 snippets): sliding windows
at the snippet rate the model was trained at, their moments merged by non-maximum suppression.

The records reduce every video to at most max_snippets snippets, so a model learns moments on
snippets of a certain length in seconds. Reducing a 40-minute video to 128 snippets ("pool", what
the records do) makes each snippet ~19 s, far coarser than any snippet of Charades training, and
an 8-second moment cannot be resolved. "windows" reads the video at the training rate instead:

1. The rate (`training_snippets`): from the training split's records (the first 512 videos in
   shard order: enough for the statistics, and reading all of ActivityNet's 5 GB of records for one
   question would take minutes), the median seconds per snippet (duration / v_len) is the rate at
   which a long video is read, the 95th percentile is the coarsest snippet training regularly had,
   and the longest of those videos in snippets is the default window (positions beyond it were
   never trained). A workdir without records at hand (an imported EMB checkpoint; data.root
   relative to another folder) takes `snippet_seconds` (e.g. 1.0 for the demo's one row per
   second), the window defaulting then to max_snippets.
2. The plan (`plan`): "pool" is the records' reduction of the whole video to <= max_snippets;
   "windows" reads the video as n = round(duration / snippet_seconds) snippets (never more than
   its feature rows) with the records' own reduction (reduce_snippets, the records' pooling) and
   cuts windows of `window` snippets every `stride` (window // 2 by default), the last moved back
   to end at the video's end; "auto" pools unless the video has more rows than max_snippets and
   pooling would make its snippets coarser than the coarsest of training (so a video as long as
   ActivityNet's training videos is still pooled, as they were).
3. The merge (`whole_video_probabilities`, `merge_windows`): each snippet's start and end logit is
   the largest among the windows covering it (a moment cut by one window's edge is seen whole by
   the next), and one softmax over all the video's snippets gives the whole video's start and end
   probabilities, as the model reads a video within its budget; spans that fit in a window are
   ranked by p_start[i] p_end[j] after tea_jax.metrics.nms (IoU above `nms_iou`). A window's own
   probabilities sum to one, so a window without the moment still has a confident best span and
   they cannot rank windows; logits can, as far as they mean the same in every window. A model
   trained on videos of many actions ranks the query's own video first for most queries; one
   trained on the demo's 2-4 actions per video far less often (bench/long_video.py,
   docs/predict.md "Long videos").
"""

import dataclasses
import logging
import os

import numpy as np

from tea_jax import metrics
from tea_jax.data.schema import record_features, records_dir
from tea_jax.errors import InputError

log = logging.getLogger(__name__)

MODES = ("auto", "windows", "pool")
SAMPLE_VIDEOS = 512  # training videos read for the rate
COARSEST_PERCENTILE = 95


@dataclasses.dataclass(frozen=True)
class LongVideo:
  """How a video longer than the model's budget is read (the command's --long, --window,
  --stride, --snippet-seconds and --nms-iou)."""

  mode: str = "auto"  # auto, windows or pool
  snippet_seconds: float | None = None  # None: the training records' median
  window: int | None = None  # snippets per window; None: the longest training video
  stride: int | None = None  # snippets between window starts; None: window // 2
  nms_iou: float = 0.5  # a window moment overlapping a better one by more is dropped

  def check(self, max_snippets: int) -> None:
    """One line for a value out of range."""
    if self.mode not in MODES:
      raise InputError(f"long-video mode {self.mode!r}: expected one of {', '.join(MODES)}")
    if self.snippet_seconds is not None and not self.snippet_seconds > 0:
      raise InputError(f"snippet seconds must be positive, got {self.snippet_seconds}")
    if self.window is not None and not 1 <= self.window <= max_snippets:
      raise InputError(f"window must be 1..{max_snippets} snippets (the model's max_snippets), "
                       f"got {self.window}")
    if self.stride is not None and not 1 <= self.stride <= (self.window or max_snippets):
      raise InputError(f"stride must be 1..window snippets (a larger one skips parts of the "
                       f"video), got {self.stride}")
    if not 0 <= self.nms_iou < 1:
      raise InputError(f"NMS IoU must be in [0, 1), got {self.nms_iou}")


@dataclasses.dataclass(frozen=True)
class TrainingSnippets:
  """The snippets a model was trained on: median and coarsest (95th percentile) seconds per
  snippet, the longest video in snippets, how many videos were read and where."""

  seconds: float
  coarsest: float
  longest: int
  videos: int
  source: str


def training_snippets(config, workdir: str,
                      sample: int = SAMPLE_VIDEOS) -> TrainingSnippets | None:
  """The snippets of the first `sample` videos of the workdir's training records, or None when the
  workdir has no records at hand (an import, or records moved)."""
  data = config.get("data")
  if not data or not data.get("records_dir") or not data.get("train_split"):
    return None
  folder = records_dir(data)
  if not os.path.isfile(os.path.join(folder, "meta.json")):
    log.warning("the records of %s are not at %s: the training snippet rate is unknown", workdir,
                folder)
    return None
  # pylint: disable=import-outside-toplevel
  import tensorflow as tf
  from tea_jax.data.input_pipeline import load_meta, split_files
  meta = load_meta(folder)
  schema = record_features(meta["video_dim"], meta["narrative_dim"])
  seconds, lengths = [], []
  for serialized in tf.data.TFRecordDataset(split_files(folder, meta, data.train_split)).take(
      sample):
    example = schema.deserialize_example(serialized)
    v_len = int(example["video"].shape[0])
    seconds.append(float(example["duration"].numpy()) / v_len)
    lengths.append(v_len)
  if not seconds:
    return None
  return TrainingSnippets(float(np.median(seconds)),
                          float(np.percentile(seconds, COARSEST_PERCENTILE)), max(lengths),
                          len(seconds), f"{folder} ({data.train_split})")


@dataclasses.dataclass(frozen=True)
class Plan:
  """How one video is read: `mode` pool or windows, the whole video as `snippets` snippets of
  `snippet_seconds`, windows of `window` snippets starting at `starts` (one window when pooled)."""

  mode: str
  snippets: int
  window: int
  starts: tuple[int, ...]
  snippet_seconds: float

  def describe(self, rows: int) -> str:
    """One log line: what was done with the video's rows."""
    if self.mode == "pool":
      return f"{rows} feature rows read as {self.snippets} snippets (pooled)"
    return (f"{rows} feature rows read as {self.snippets} snippets of "
            f"{self.snippet_seconds:.3g} s in {len(self.starts)} windows of {self.window}")


def window_starts(snippets: int, window: int, stride: int) -> tuple[int, ...]:
  """First snippet of each window: every `stride`, the last moved back to end at the end."""
  if snippets <= window:
    return (0,)
  starts = list(range(0, snippets - window + 1, stride))
  if starts[-1] != snippets - window:
    starts.append(snippets - window)
  return tuple(starts)


def plan(rows: int, duration: float, max_snippets: int, settings: LongVideo,
         training: TrainingSnippets | None) -> Plan:
  """How a video of `rows` feature rows and `duration` seconds is read (module docstring)."""
  pooled = min(rows, max_snippets)
  pool = Plan("pool", pooled, pooled, (0,), duration / pooled)
  if settings.mode == "pool" or (settings.mode == "auto" and rows <= max_snippets):
    return pool
  seconds = settings.snippet_seconds or (training.seconds if training else None)
  if settings.mode == "auto":
    coarsest = training.coarsest if training else seconds
    if coarsest is None:
      log.warning("%d feature rows pooled to %d snippets: the training snippet rate is unknown "
                  "(no training records at hand); pass snippet_seconds (--snippet-seconds) to "
                  "search windows", rows, max_snippets)
      return pool
    if duration / max_snippets <= coarsest:
      return pool
  if seconds is None:
    raise InputError("windows need the snippet rate the model was trained at, and its training "
                     "records are not at hand: pass snippet_seconds (--snippet-seconds)")
  snippets = int(max(1, min(rows, round(duration / seconds))))
  window = min(settings.window or (training.longest if training else max_snippets), snippets)
  stride = settings.stride or max(1, window // 2)
  return Plan("windows", snippets, window, window_starts(snippets, window, stride),
              duration / snippets)


def stitch(curves: np.ndarray, plan_: Plan) -> np.ndarray:
  """(snippets,) curve of the whole video from (n_windows, width) curves: at each snippet, the
  largest value among the windows covering it."""
  out = np.full(plan_.snippets, -np.inf, np.asarray(curves).dtype)
  for start, curve in zip(plan_.starts, curves):
    out[start:start + len(curve)] = np.maximum(out[start:start + len(curve)], curve)
  return out


def softmax(logits: np.ndarray) -> np.ndarray:
  """float64 softmax of a (n,) vector."""
  z = np.asarray(logits, np.float64)
  z = np.exp(z - z.max())
  return z / z.sum()


def whole_video_probabilities(scores: dict[str, np.ndarray], plan_: Plan,
                              alpha: float | None) -> tuple[np.ndarray, np.ndarray]:
  """(start_prob, end_prob), each (snippets,), of one query over the whole video, from its windows'
  (n_windows, width) logits: each snippet's largest logit among the windows covering it (a moment
  cut by one window's edge is seen whole by the next), one softmax over all snippets, as the model
  reads a video that fits its budget. With the paragraph branch (alpha
  given), (p_v + alpha p_c) / (1 + alpha) of the two branches' softmaxes, as the model mixes them."""
  out = []
  for side in ("start", "end"):
    p = softmax(stitch(scores[f"{side}_logits"], plan_))
    if alpha is not None:
      p = (p + alpha * softmax(stitch(scores[f"paragraph_{side}_logits"], plan_))) / (1 + alpha)
    out.append(p)
  return out[0], out[1]


def merge_windows(start_prob: np.ndarray, end_prob: np.ndarray, plan_: Plan, width: int,
                  duration: float, top_k: int, nms_iou: float) -> list[tuple[int, int, float]]:
  """The `top_k` best (i, j, probability) spans of one query's whole-video (snippets,) start / end
  probabilities: every span that fits in a window (j - i < width), probability
  p_start[i] p_end[j], after NMS (IoU above nms_iou dropped)."""
  n = plan_.snippets
  i = np.concatenate([np.arange(n - d) for d in range(min(width, n))])
  j = np.concatenate([np.arange(d, n) for d in range(min(width, n))])
  probability = np.asarray(start_prob, np.float64)[i] * np.asarray(end_prob, np.float64)[j]
  start_s, end_s = metrics.index_to_time(i, j, n, duration)
  kept = metrics.nms(start_s, end_s, probability, nms_iou, max_keep=top_k)
  return [(int(i[k]), int(j[k]), float(probability[k])) for k in kept]
