"""Ask a trained model about videos from Python: the one code path of the predict command
(tea_apps/predict.py is a command line over it) and of apps built on it.

    from tea_apps.api import Predictor
    predictor = Predictor.from_workdir("runs/demo/emb")
    features = np.load("demo_data/features/S0213.npy")              # (T, 256)
    results = predictor.predict_features(features, 21.0, ["person washes the book."], top_k=3)
    results[0].moments[0]   # Moment(start=14.0, end=17.0, probability=0.08, start_index=14, ...)

A Predictor reads the workdir's config and vocabulary at once and restores the checkpoint's
variables on first use, once; the jitted forward is compiled once per batch shape
(tea_jax.inference keeps it per model config). The I3D weights and the narrator are loaded on first
use and kept, and each expensive phase is cached on disk beside the video (tea_apps/video_inputs.py:
I3D features, narration, GloVe rows), so asking again costs one forward pass.

Inputs are prepared as data_prep.build_records prepared the records, with the same functions:
snippet features reduced to the workdir's max_snippets with its pooling, narratives embedded with
the records' word vectors and aligned to the snippets, query tokens through the workdir's
vocabulary (unknown words -> UNK). A video longer than max_snippets snippets is searched in sliding
windows at the training snippet rate (tea_apps/long_video.py) unless `long="pool"`.
"""

import dataclasses
import logging
import math
import os
from typing import Sequence

import numpy as np

from data_prep import glove
from data_prep.frames import duration_seconds
from data_prep.features import reduce_snippets
from data_prep.narratives import MeanWordVectorEncoder, video_narrative
from data_prep.text import UNK_ID, tokenize, word_ids
from tea_apps import long_video, video_inputs
from tea_jax import checkpointing, inference, metrics, trainfree
from tea_jax import workdir as workdir_files
from tea_jax.errors import InputError
from tea_jax.model.config import ModelConfig

log = logging.getLogger(__name__)

# Rows of (window, query) per forward call: batches are padded to a power of two up to this, so a
# Predictor compiles a handful of shapes however many windows or queries it is asked about.
MAX_BATCH = 32


@dataclasses.dataclass(frozen=True)
class Moment:
  """A moment: `start`, `end` in seconds, its `probability` p_start[i] p_end[j], and its first and
  last snippets `start_index`, `end_index` (on QueryResult's snippets: start = i d / snippets,
  end = (j + 1) d / snippets, the evaluation's formula)."""

  start: float
  end: float
  probability: float
  start_index: int
  end_index: int

  def to_dict(self) -> dict:
    """The moment as the predict command prints it (seconds rounded to the millisecond)."""
    return {"start": round(self.start, 3), "end": round(self.end, 3),
            "start_index": self.start_index, "end_index": self.end_index,
            "probability": self.probability}


@dataclasses.dataclass
class QueryResult:
  """One query's answer: its moments, best first, and the curves a timeline draws, each
  (snippets,) over the whole video: start / end probabilities and the highlight score (with
  windows, the whole video's probabilities and the largest highlight among the windows covering a
  snippet: tea_apps/long_video.py). `plan` says how the video was read (pooled, or windows at the
  training rate)."""

  query: str
  moments: list[Moment]
  duration: float
  start_prob: np.ndarray
  end_prob: np.ndarray
  highlight: np.ndarray
  plan: long_video.Plan


def data_settings(config) -> dict:
  """How the workdir's records were prepared: its config's data section, or for a workdir written
  by tea_jax.import_emb (no data section) EMB's own settings: at most max_positions snippets
  (mean-pooled) and query words."""
  data = config.get("data") or {}
  limit = config.model.max_positions
  return {"max_snippets": data.get("max_snippets", limit),
          "max_words": data.get("max_words", limit), "pooling": data.get("pooling", "mean")}


def query_ids(config, vocabulary: dict[str, int], queries: Sequence[str],
              where: str = "the workdir") -> list[list[int]]:
  """Each query's vocabulary ids, tokenised as the records were (unknown words -> UNK); one line
  for no query, a query without tokens, or one whose words are all unknown to the model."""
  if isinstance(queries, str) or not isinstance(queries, Sequence):
    raise InputError(f"queries must be a list of sentences, got {type(queries).__name__}")
  if not queries:
    raise InputError("no query given")
  max_words = data_settings(config)["max_words"]
  ids = []
  for query in queries:
    if not isinstance(query, str):
      raise InputError(f"a query must be a sentence (str), got {query!r}")
    tokens = word_ids(tokenize(query), vocabulary, max_words)
    if not tokens:
      raise InputError(f"the query {query!r} has no tokens")
    if all(t == UNK_ID for t in tokens):
      raise InputError(f"no word of the query {query!r} is in the vocabulary of {where} "
                       f"(every token would be UNK): use the words of its training queries")
    ids.append(tokens)
  return ids


def make_batch(config, vocabulary: dict[str, int], video: np.ndarray, queries: list[str],
               narrative: np.ndarray | None = None) -> dict[str, np.ndarray]:
  """The batch `tea_jax.inference.forward` takes for each query in one video: `video` (v_len,
  video_dim) its snippet features reduced as the records are, `narrative` (v_len, narrative_dim)
  its aligned narrative rows (TEA models), the queries tokenised as the records were and mapped
  through `vocabulary` (tea_jax.workdir.read_vocabulary: unknown words are UNK)."""
  ids = query_ids(config, vocabulary, queries)
  check_features(config, video)
  if narrative is None:
    if ModelConfig.from_config(config).uses_narrative:
      raise InputError(f"the model reads narratives (merge={config.model.merge!r}, "
                       f"paragraph_branch={config.model.paragraph_branch}): pass them")
    narrative = np.zeros((len(video), config.model.narrative_dim), np.float32)
  rows = [(0, q) for q in range(len(queries))]
  return _stack(video[None], narrative[None], ids, rows)


def check_features(config, features: np.ndarray) -> None:
  """(T, video_dim) finite float features, or one line saying what is wrong."""
  if not isinstance(features, np.ndarray) or features.ndim != 2 or not len(features):
    raise InputError(f"features must be a (T, D) array, got shape {np.shape(features)}")
  if features.shape[1] != config.model.video_dim:
    raise InputError(f"features have {features.shape[1]} channels; the model expects "
                     f"{config.model.video_dim}")
  if not np.all(np.isfinite(features)):
    raise InputError("features contain NaN or inf")


def _stack(videos: np.ndarray, narratives: np.ndarray, ids: list[list[int]],
           rows: list[tuple[int, int]], length: int | None = None,
           words: int | None = None) -> dict[str, np.ndarray]:
  """The forward batch of (window, query) `rows`: window w of `videos` (n_windows, L, Dv) and
  `narratives` (n_windows, L, Dn) with query q's `ids`; snippets padded (masked) to `length` and
  words to `words` (default: L and the longest query)."""
  words = words or max(len(ids[q]) for _, q in rows)
  windows = [w for w, _ in rows]
  valid = videos.shape[1]
  length = length or valid
  pad = ((0, 0), (0, length - valid), (0, 0))
  return {
      "video": np.pad(videos[windows].astype(np.float32), pad),
      "narrative": np.pad(narratives[windows].astype(np.float32), pad),
      "video_mask": np.repeat((np.arange(length) < valid)[None].astype(np.float32), len(rows),
                              axis=0),
      "word_ids": np.array([ids[q] + [0] * (words - len(ids[q])) for _, q in rows], np.int32),
      "query_mask": np.array([[1.0] * len(ids[q]) + [0.0] * (words - len(ids[q]))
                              for _, q in rows], np.float32),
  }


def _padded_size(rows: int) -> int:
  """The batch size `rows` rows are run in: the next power of two, at most MAX_BATCH."""
  return min(MAX_BATCH, 1 << max(0, rows - 1).bit_length())


def _padded_length(n: int, limit: int) -> int:
  """Snippets or words padded to a multiple of 8 (at most `limit`), so that videos and queries of
  similar lengths share a compiled forward. Start/end logits and the highlight do not depend on
  the padding (docs/design.md section 4); evaluation pads its batches too."""
  return min(limit, -(-n // 8) * 8)


class Predictor:
  """A workdir's model, asked about videos (module docstring). Build it with `from_workdir`."""

  def __init__(self, workdir: str, config, vocabulary: dict[str, int], step: int | None = None,
               *, i3d: video_inputs.I3D | None = None,
               narrator: video_inputs.Narrator | None = None, word_vectors: str | None = None,
               cache_dir: str | None = None, long: long_video.LongVideo | None = None):
    self.workdir, self.config, self.vocabulary, self.step = workdir, config, vocabulary, step
    self.i3d, self.narrator, self.word_vectors = i3d, narrator, word_vectors
    self.cache_dir = cache_dir
    self.long = long or long_video.LongVideo()
    self.long.check(self.max_snippets)
    self._variables = None
    self._training = None  # TrainingSnippets, read on the first long video
    self._word_rows: dict[str, np.ndarray | None] = {}  # GloVe rows looked up so far

  @classmethod
  def from_workdir(cls, workdir: str, step: int | None = None, *, i3d_weights: str | None = None,
                   narrator_model: str | None = None, word_vectors: str | None = None,
                   cache_dir: str | None = None, long: str = "auto", window: int | None = None,
                   stride: int | None = None, snippet_seconds: float | None = None,
                   nms_iou: float = 0.5, i3d_batch_size: int = 8,
                   i3d_precision: str = "highest", narrator_backend: str = "llava",
                   narrator_interval: float = 1.0, narrator_max_new_tokens: int | None = None,
                   narrator_batch_size: int = 16, narrator_device: str = "auto",
                   narrator_preprocess: str | None = None,
                   narrator_template: str | None = None) -> "Predictor":
    """The model of a trained (tea_jax.main) or imported (tea_jax.import_emb --words) workdir,
    its best checkpoint or `step`. `i3d_weights` (rgb_charades.pt or its .npz) for video files;
    for TEA models `narrator_model` (a local LLaVA-1.5 directory; the narrator_* settings as
    data_prep.narrate takes them) and `word_vectors` (the GloVe file of its records); `cache_dir`
    for the caches (default: beside each video); `long`, `window`, `stride`, `snippet_seconds`,
    `nms_iou` for videos longer than the model's budget (tea_apps/long_video.py)."""
    i3d = video_inputs.I3D(i3d_weights, i3d_batch_size, i3d_precision) if i3d_weights else None
    narrator = None
    if narrator_model:
      narrator = video_inputs.Narrator(video_inputs.NarratorSettings(
          narrator_model, narrator_backend, narrator_interval, narrator_max_new_tokens,
          narrator_batch_size, narrator_device, narrator_preprocess, narrator_template))
    settings = long_video.LongVideo(long, snippet_seconds, window, stride, nms_iou)
    config = workdir_files.read_config(workdir)
    if trainfree.is_trainfree(config) and cls is Predictor:
      cls = TrainFreePredictor  # pylint: disable=self-cls-assignment
    return cls(workdir, config, workdir_files.read_vocabulary(workdir), step, i3d=i3d, narrator=narrator,
               word_vectors=word_vectors, cache_dir=cache_dir, long=settings)

  # -------------------------------------------------------------------------------------------
  # The model

  @property
  def uses_narrative(self) -> bool:
    """Whether the model reads narratives (TEA) or not (EMB)."""
    return ModelConfig.from_config(self.config).uses_narrative

  @property
  def label(self) -> str:
    """The model's name on a plot: TEA or EMB, and the workdir's folder name."""
    kind = "TEA" if self.uses_narrative else "EMB"
    return f"{kind} ({os.path.basename(os.path.normpath(self.workdir))})"

  @property
  def max_snippets(self) -> int:
    """The model's snippet budget: the records' max_snippets (an import: max_positions)."""
    return data_settings(self.config)["max_snippets"]

  @property
  def variables(self):
    """The checkpoint's variables (the best one unless a step was asked for), restored once."""
    if self._variables is None:
      self._variables, self.step = checkpointing.restore_variables(self.workdir, self.step)
    return self._variables

  def training_snippets(self) -> long_video.TrainingSnippets | None:
    """The snippets of the model's training videos (read once, on the first long video)."""
    if self._training is None:
      self._training = long_video.training_snippets(self.config, self.workdir) or False
    return self._training or None

  def check_video_files(self) -> None:
    """What predicting from video files needs: I3D weights and a model of 1024-d I3D features."""
    dim = self.config.model.video_dim
    if dim != video_inputs.I3D_DIM:
      raise InputError(f"the model in {self.workdir} reads {dim}-d video features; video files "
                       f"give {video_inputs.I3D_DIM}-d I3D features (predict from features like "
                       f"its training data: --features, predict_features)")
    if self.i3d is None:
      raise InputError("video files need I3D weights (i3d_weights=, --i3d-weights: "
                       "rgb_charades.pt or a converted .npz)")

  # -------------------------------------------------------------------------------------------
  # Video files: each phase cached

  def video_cache(self, video: str) -> video_inputs.VideoCache:
    """The cache folder of a video file."""
    return video_inputs.VideoCache.for_video(video, self.cache_dir)

  def video_features(self, video: str) -> tuple[np.ndarray, float]:
    """(T, 1024) I3D features of a video file and its duration in seconds (cached)."""
    self.check_video_files()
    return self.i3d.features(video, self.video_cache(video))

  def narratives(self, video: str) -> list[tuple[float, str]]:
    """[(t, caption)] of a video file by the narrator (cached)."""
    if self.narrator is None:
      raise InputError("narrating a video needs a narrator (narrator_model=, --narrator-model)")
    return self.narrator.narratives(video, self.video_cache(video))

  def predict(self, video: str, queries: Sequence[str], top_k: int = 5,
              narratives: list[tuple[float, str]] | None = None) -> list[QueryResult]:
    """The `top_k` best moments of each query in a video file: I3D features, for TEA models its
    narration (or `narratives` [(t, text)] given), then predict_features."""
    check_top_k(top_k)
    query_ids(self.config, self.vocabulary, queries, self.workdir)  # before any expensive phase
    self.check_video_files()
    if self.uses_narrative and narratives is None:
      self.check_narrative_source(self.narrator is not None)
    features, duration = self.video_features(video)
    if self.uses_narrative and narratives is None:
      narratives = self.narratives(video)
    return self._predict(features, duration, queries, narratives, top_k,
                         os.path.join(self.video_cache(video).folder, "glove"))

  def check_narrative_source(self, have_narratives: bool) -> None:
    """A TEA model needs narratives and the word vectors to embed them."""
    if not self.uses_narrative:
      return
    if not have_narratives:
      raise InputError(f"the model in {self.workdir} reads narratives: pass narratives= or a "
                       f"narrator (narrator_model=), and word_vectors=")
    if not self.word_vectors:
      raise InputError(f"the model in {self.workdir} reads narratives: pass word_vectors= (the "
                       f"GloVe file of its records)")

  # -------------------------------------------------------------------------------------------
  # Features

  def predict_features(self, features: np.ndarray, duration: float, queries: Sequence[str],
                       narratives=None, top_k: int = 5) -> list[QueryResult]:
    """The `top_k` best moments of each query in a video of `duration` seconds given its (T, D)
    snippet features (before any reduction), and for TEA models its narratives: [(t, text)]
    (embedded with `word_vectors`), or (T, narrative_dim) rows already aligned to the features'
    rows (used as they are when the video is not reduced)."""
    return self._predict(features, duration, queries, narratives, top_k, self.cache_dir)

  def plan(self, rows: int, duration: float) -> long_video.Plan:
    """How a video of `rows` feature rows and `duration` seconds is read (pooled or windows)."""
    training = None
    if (self.long.mode == "auto" and rows > self.max_snippets) or self.long.mode == "windows":
      training = self.training_snippets()
    return long_video.plan(rows, duration, self.max_snippets, self.long, training)

  def _predict(self, features, duration, queries, narratives, top_k,
               glove_cache: str | None) -> list[QueryResult]:
    """predict_features with the GloVe rows' cache folder."""
    check_top_k(top_k)
    ids = query_ids(self.config, self.vocabulary, queries, self.workdir)
    self._check_video(features, duration, narratives)
    plan_ = self.plan(len(features), duration)
    if plan_.mode == "windows" or len(features) > self.max_snippets:
      log.info("%s", plan_.describe(len(features)))
    video = reduce_snippets(features, plan_.snippets, data_settings(self.config)["pooling"])
    narrative = self._narrative_rows(narratives, duration, len(features), plan_.snippets,
                                     glove_cache)
    windows = np.stack([video[s:s + plan_.window] for s in plan_.starts])
    narrative_windows = np.stack([narrative[s:s + plan_.window] for s in plan_.starts])
    # A pooled video is answered from its probabilities, windows from their logits.
    keys = ("start_prob", "end_prob", "highlight") if plan_.mode == "pool" else (
        ("highlight", "start_logits", "end_logits")
        + (("paragraph_start_logits", "paragraph_end_logits")
           if self.config.model.paragraph_branch else ()))
    scores = self._scores(windows, narrative_windows, ids, keys)  # each (Q, n_windows, window)
    return [self._result(query, {k: v[q] for k, v in scores.items()}, plan_, duration, top_k)
            for q, query in enumerate(queries)]

  def _check_video(self, features, duration: float, narratives) -> None:
    """One line for features, a duration or narratives the model cannot read."""
    check_features(self.config, features)
    if not np.isfinite(duration) or duration <= 0:
      raise InputError(f"duration must be positive seconds, got {duration}")
    if self.uses_narrative and not isinstance(narratives, np.ndarray):
      self.check_narrative_source(narratives is not None)  # texts need the word vectors

  def _narrative_rows(self, narratives, duration: float, rows: int, snippets: int,
                      glove_cache: str | None) -> np.ndarray:
    """(snippets, narrative_dim) rows the model reads: zeros for EMB models, texts aligned as
    build_records aligns them, or given rows (when the video keeps its rows)."""
    dim = self.config.model.narrative_dim
    if not self.uses_narrative:
      return np.zeros((snippets, dim), np.float32)
    if isinstance(narratives, np.ndarray):
      if narratives.shape != (rows, dim):
        raise InputError(f"narrative rows have shape {narratives.shape}; expected ({rows}, {dim}) "
                         f"(one per feature row)")
      if snippets != rows:
        raise InputError(f"narrative rows are aligned to the {rows} feature rows, but the video "
                         f"is read as {snippets} snippets: give the narratives as [(t, text)]")
      return narratives.astype(np.float32)
    try:
      items = [(float(t), str(text)) for t, text in narratives]
    except (TypeError, ValueError):
      raise InputError("narratives must be [(t, text)] pairs or an array of aligned rows") \
          from None
    if not items:
      raise InputError("no narratives given (a TEA model reads them)")
    return video_narrative(items, self._encoder(items, glove_cache), duration, snippets)

  def _encoder(self, items: list[tuple[float, str]],
               glove_cache: str | None) -> MeanWordVectorEncoder:
    """The records' sentence encoder (mean GloVe vector) for these narratives' words: rows not
    looked up yet are read from the word-vector file (and its cache), then kept."""
    words = sorted({t for _, text in items for t in tokenize(text)})
    new = [w for w in words if w not in self._word_rows]
    if new:
      index, vectors, _ = glove.read_vectors(self.word_vectors, new,
                                             dim=self.config.model.word_dim,
                                             cache_dir=glove_cache, progress=False)
      for word in new:
        self._word_rows[word] = vectors[index[word]] if word in index else None
    known = [w for w in words if self._word_rows[w] is not None]
    vectors = np.stack([self._word_rows[w] for w in known]) if known else np.zeros(
        (0, self.config.model.word_dim), np.float32)
    return MeanWordVectorEncoder({w: i for i, w in enumerate(known)}, vectors)

  def _scores(self, windows: np.ndarray, narratives: np.ndarray, ids: list[list[int]],
              keys: tuple[str, ...]) -> dict[str, np.ndarray]:
    """The forward outputs `keys` (e.g. start_prob, start_logits, highlight), each (n_queries,
    n_windows, window), of every query in every window; (window, query) rows run in batches of a
    few fixed sizes."""
    rows = [(w, q) for q in range(len(ids)) for w in range(len(windows))]
    limit = self.config.model.max_positions
    length = _padded_length(windows.shape[1], limit)
    words = _padded_length(max(len(t) for t in ids), limit)
    out = {k: [] for k in keys}
    for first in range(0, len(rows), MAX_BATCH):
      chunk = rows[first:first + MAX_BATCH]
      padded = chunk + [chunk[-1]] * (_padded_size(len(chunk)) - len(chunk))
      result = inference.forward(self.config, self.variables,
                                 _stack(windows, narratives, ids, padded, length, words))
      for k, values in out.items():
        values.append(np.asarray(result[k])[:len(chunk), :windows.shape[1]])
    return {k: np.concatenate(v).reshape(len(ids), len(windows), -1) for k, v in out.items()}

  def _result(self, query: str, scores: dict[str, np.ndarray], plan_: long_video.Plan,
              duration: float, top_k: int) -> QueryResult:
    """One query's moments and whole-video curves from its (n_windows, window) scores."""
    if plan_.mode == "pool":
      spans = metrics.top_spans(scores["start_prob"][0], scores["end_prob"][0], top_k)
      curves = {k: v[0] for k, v in scores.items()}
    else:
      model = self.config.model
      start, end = long_video.whole_video_probabilities(
          scores, plan_, model.alpha if model.paragraph_branch else None)
      width = scores["start_logits"].shape[1]
      spans = long_video.merge_windows(start, end, plan_, width, duration, top_k,
                                       self.long.nms_iou)
      curves = {"start_prob": start.astype(np.float32), "end_prob": end.astype(np.float32),
                "highlight": long_video.stitch(scores["highlight"], plan_)}
    moments = []
    for i, j, p in spans:
      start, end = metrics.index_to_time(i, j, plan_.snippets, duration)
      moments.append(Moment(float(start), float(end), p, i, j))
    return QueryResult(query, moments, float(duration), plan=plan_, **curves)


class TrainFreePredictor(Predictor):
  """The train-free retriever of a workdir written by `tea-jax --config ...:trainfree` (no
  checkpoint): each query's cosine with the narrative rows, searched for its best segments with
  the workdir's `trainfree` settings (tea_jax/trainfree.py). `Predictor.from_workdir` returns one
  for such a workdir. Moments carry the segment's score (mean relevance inside minus outside) as
  their `probability`; the timeline's highlight curve is the normalised relevance and its start /
  end curves are zero (the search has no span distribution). Video features are not read: a video
  file is gridded at one snippet per narration interval, a features array by its rows."""

  def __init__(self, *args, **kwargs):
    super().__init__(*args, **kwargs)
    self.step = 0  # what its evaluation's predictions say: no checkpoint

  @property
  def label(self) -> str:
    return f"train-free ({os.path.basename(os.path.normpath(self.workdir))})"

  @property
  def variables(self):
    return {}  # nothing trained: no checkpoint to restore

  @property
  def settings(self) -> trainfree.SearchSettings:
    return trainfree.SearchSettings.from_config(self.config.trainfree)

  def check_video_files(self) -> None:
    """Video files need no I3D weights here (no video features are read)."""

  def video_features(self, video: str) -> tuple[np.ndarray, float]:
    """(snippets, video_dim) zeros, one per narration interval, and the file's duration."""
    video_inputs.check_video(video)
    duration = duration_seconds(video)
    if duration <= 0:
      raise InputError(f"{video}: its duration cannot be read")
    interval = self.narrator.settings.interval if self.narrator else 1.0
    rows = max(1, math.ceil(duration / interval))
    return np.zeros((rows, self.config.model.video_dim), np.float32), duration

  def plan(self, rows: int, duration: float) -> long_video.Plan:
    """The whole video, pooled to the snippet budget (the search has no window length)."""
    return long_video.plan(rows, duration, self.max_snippets, long_video.LongVideo("pool"), None)

  def query_vectors(self, queries: Sequence[str], glove_cache: str | None) -> np.ndarray:
    """(Q, word_dim) mean word vectors of the queries: through the GloVe file when the Predictor
    has one (any word), else the workdir's vocabulary rows (its records' words)."""
    ids = query_ids(self.config, self.vocabulary, queries, self.workdir)
    if self.word_vectors:
      encoder = self._encoder([(0.0, q) for q in queries], glove_cache)
      return encoder.encode(list(queries))
    table = workdir_files.read_word_vectors(self.workdir)
    return np.stack([trainfree.mean_word_vector(np.array(t), table) for t in ids])

  def _predict(self, features, duration, queries, narratives, top_k,
               glove_cache: str | None) -> list[QueryResult]:
    check_top_k(top_k)
    vectors = self.query_vectors(queries, glove_cache)
    self._check_video(features, duration, narratives)
    plan_ = self.plan(len(features), duration)
    narrative = self._narrative_rows(narratives, duration, len(features), plan_.snippets,
                                     glove_cache)
    results = []
    for query, vector in zip(queries, vectors):
      curve = trainfree.cosine_relevance(vector, narrative)
      moments = []
      for seg in trainfree.search(curve, self.settings, top_k):
        start, end = metrics.index_to_time(seg.start, seg.end, plan_.snippets, duration)
        moments.append(Moment(float(start), float(end), seg.score, seg.start, seg.end))
      zeros = np.zeros(plan_.snippets)
      results.append(QueryResult(query, moments, float(duration), zeros, zeros,
                                 trainfree.normalise(curve), plan_))
    return results


def check_top_k(top_k) -> None:
  """top_k is a whole number of moments, at least 1."""
  if isinstance(top_k, bool) or not isinstance(top_k, (int, np.integer)) or top_k < 1:
    raise InputError(f"top_k must be a whole number >= 1, got {top_k!r}")
