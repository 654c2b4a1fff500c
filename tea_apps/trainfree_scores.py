"""Relevance curves for the train-free retriever from PyTorch encoders (docs/design.md section 21):
an app, since it reads the records (tea_jax) and runs encoders (torch).

    python -m tea_apps.trainfree_scores --config configs/charades_cd.py:trainfree \\
        --out relevance.jsonl [--text_encoder DIR] [--blip2 DIR --videos DIR] [--split test ...]

The library's own curve (tea_jax/trainfree.py) is the cosine of mean GloVe vectors, which the
records hold. Two other curves need torch, so they are computed here, offline, for every pair of
the records' evaluation splits, and written as JSON lines that `--mode eval` reads
(config.trainfree.scores, weighted by text_weight and frames_weight):
  text    a local transformers text encoder (AutoModel, mean-pooled last hidden state over the
          tokens) embeds the query and each caption; captions are aligned to the snippets as the
          records align GloVe rows (data_prep.narratives.video_narrative), then cosine;
  frames  a local BLIP-2 (Blip2ForImageTextRetrieval) scores frames against the query with its
          image-text contrastive head, the cosine of the query's [CLS] projection and the best of
          the Q-Former's query tokens (TFVTG's frame score); frames are decoded as the narrator
          decodes them (data_prep.frames.sample_frames, one per `--frame_interval` seconds) and
          aligned to the snippets like captions.

Each line: {"split", "pair_index", "video_id", "query", "curves": {"text": [...], "frames": [...]}},
one value per snippet of the pair's video in the records. Only local model directories are read.
"""

from __future__ import annotations

import json
import logging
import os

import numpy as np
from absl import flags
from ml_collections import config_flags

from data_prep.frames import find_videos, sample_frames
from data_prep.narratives import align_to_snippets, read_narratives, video_narrative
from tea_jax import cli, files, trainfree
from tea_jax.data.schema import data_path, records_dir
from tea_jax.errors import InputError

log = logging.getLogger(__name__)


def _local_dir(path: str, what: str) -> str:
  if not os.path.isdir(path):
    raise InputError(f"{what} {path!r} is not a local model directory")
  return path


class TransformerTextEncoder:
  """A frozen sentence encoder from a local transformers directory: the mean of the last hidden
  state over the sentence's tokens (the TextEncoder protocol of data_prep.narratives)."""

  def __init__(self, model_dir: str, batch_size: int = 64, device: str = "cpu"):
    from transformers import AutoModel, AutoTokenizer  # pylint: disable=import-outside-toplevel
    _local_dir(model_dir, "text encoder")
    self.tokenizer = AutoTokenizer.from_pretrained(model_dir, local_files_only=True)
    self.model = AutoModel.from_pretrained(model_dir, local_files_only=True).to(device).eval()
    self.batch_size, self.device = batch_size, device
    self.dim = self.model.config.hidden_size

  def encode(self, sentences: list[str]) -> np.ndarray:
    import torch  # pylint: disable=import-outside-toplevel
    out = []
    with torch.no_grad():
      for first in range(0, len(sentences), self.batch_size):
        batch = self.tokenizer(sentences[first:first + self.batch_size], padding=True,
                               truncation=True, return_tensors="pt").to(self.device)
        hidden = self.model(**batch).last_hidden_state  # (n, T, D)
        mask = batch["attention_mask"][..., None].to(hidden.dtype)
        out.append(((hidden * mask).sum(1) / mask.sum(1).clamp(min=1)).float().cpu().numpy())
    return np.concatenate(out) if out else np.zeros((0, self.dim), np.float32)


class Blip2FrameScorer:
  """BLIP-2's image-text contrastive score of frames against a sentence, from a local directory."""

  def __init__(self, model_dir: str, batch_size: int = 32, device: str = "cpu"):
    # pylint: disable=import-outside-toplevel
    from transformers import AutoProcessor, Blip2ForImageTextRetrieval
    _local_dir(model_dir, "BLIP-2")
    self.processor = AutoProcessor.from_pretrained(model_dir, local_files_only=True)
    self.model = Blip2ForImageTextRetrieval.from_pretrained(
        model_dir, local_files_only=True).to(device).eval()
    self.batch_size, self.device = batch_size, device

  def scores(self, images: list, sentence: str) -> np.ndarray:
    """(n_frames,) cosine of each frame with the sentence (max over the Q-Former's tokens)."""
    import torch  # pylint: disable=import-outside-toplevel
    out = []
    with torch.no_grad():
      for first in range(0, len(images), self.batch_size):
        chunk = images[first:first + self.batch_size]
        inputs = self.processor(images=chunk, text=[sentence] * len(chunk), return_tensors="pt",
                                padding=True).to(self.device)
        logits = self.model(**inputs, use_image_text_matching_head=False).logits_per_image
        out.append(logits[:, 0].float().cpu().numpy())  # (n, n_texts): every text is `sentence`
    return np.concatenate(out)


def text_curve(encoder, query: str, rows: np.ndarray) -> np.ndarray:
  """(snippets,) cosine of the query with `rows`, the video's captions embedded by `encoder` and
  aligned to its snippets (data_prep.narratives.video_narrative)."""
  return trainfree.cosine_relevance(encoder.encode([query])[0], rows)


def frame_curve(scorer: Blip2FrameScorer, query: str, frames: list[tuple[float, object]],
                duration: float, snippets: int) -> np.ndarray:
  """(snippets,) frame scores aligned to the snippets (the mean of a snippet's frames, else the
  frame nearest its centre)."""
  scores = scorer.scores([image for _, image in frames], query)
  times = np.array([t for t, _ in frames])
  return align_to_snippets(times, scores[:, None], duration, snippets)[:, 0]


def pairs(config, splits: list[str]):
  """(split, pair_index, video_id, query, duration, snippets) of every evaluated pair."""
  from tea_jax.data.input_pipeline import Records  # pylint: disable=import-outside-toplevel
  records = Records(records_dir(config.data), config.data)
  for split in splits:
    for batch in records.eval_batches(split, config.eval_batch_size):
      for i in np.nonzero(batch["valid"] > 0)[0]:
        yield (split, int(batch["pair_index"][i]), str(batch["video_id"][i]),
               str(batch["query"][i]), float(batch["duration"][i]),
               int(batch["video_mask"][i].sum()))


def write_scores(config, out: str, *, text_encoder: str | None = None, blip2: str | None = None,
                 videos: str | None = None, splits: list[str] | None = None,
                 frame_interval: float = 1.0, device: str = "cpu") -> int:
  """Writes the curves of every pair of `splits` (default: the config's eval splits) to `out`;
  returns the number of lines."""
  if not text_encoder and not blip2:
    raise InputError("nothing to score: give a text encoder directory, a BLIP-2 one, or both")
  if blip2 and not videos:
    raise InputError("frame scores need the videos folder (--videos)")
  splits = list(splits or config.data.eval_splits)
  encoder = TransformerTextEncoder(text_encoder, device=device) if text_encoder else None
  scorer = Blip2FrameScorer(blip2, device=device) if blip2 else None
  captions = {}
  if encoder:
    path = data_path(config.data, "narratives")
    if not path or not os.path.isfile(path):
      raise InputError(f"the text curve needs the narratives file (config.data.narratives): "
                       f"{path!r} is missing")
    captions = read_narratives(path)[0]
  video_files = find_videos(videos) if scorer else {}
  current: dict = {}  # the current video's caption rows and frames: pairs come video by video
  lines = []
  for split, pair_index, video_id, query, duration, snippets in pairs(config, splits):
    if current.get("video_id") != video_id:
      current = {"video_id": video_id}
    curves = {}
    if encoder:
      if video_id not in captions:
        raise InputError(f"video {video_id} has no narratives in {config.data.narratives}")
      if "rows" not in current:  # the captions once per video, not once per query
        current["rows"] = video_narrative(captions[video_id], encoder, duration, snippets)
      curves["text"] = text_curve(encoder, query, current["rows"]).tolist()
    if scorer:
      if video_id not in video_files:
        raise InputError(f"video {video_id} not found under {videos}")
      if "frames" not in current:
        current["frames"] = list(sample_frames(video_files[video_id], frame_interval))
      curves["frames"] = frame_curve(scorer, query, current["frames"], duration,
                                     snippets).tolist()
    lines.append({"split": split, "pair_index": pair_index, "video_id": video_id,
                  "query": query, "curves": curves})
  files.write_lines(out, lines)
  log.info("wrote %d curves to %s", len(lines), out)
  return len(lines)


def main(argv):
  del argv
  cli.setup_logging()
  f = flags.FLAGS
  count = cli.run_reporting(lambda: write_scores(
      f.config, f.out, text_encoder=f.text_encoder, blip2=f.blip2, videos=f.videos,
      splits=f.split, frame_interval=f.frame_interval, device=f.device))
  print(json.dumps({"out": f.out, "pairs": count}))


if __name__ == "__main__":
  config_flags.DEFINE_config_file("config", None, "Experiment config file (configs/*.py).",
                                  lock_config=True)
  flags.DEFINE_string("out", None, "Output JSON lines file.")
  flags.DEFINE_string("text_encoder", None, "Local transformers text encoder directory.")
  flags.DEFINE_string("blip2", None, "Local BLIP-2 directory (Blip2ForImageTextRetrieval).")
  flags.DEFINE_string("videos", None, "Folder of the videos (for --blip2).")
  flags.DEFINE_multi_string("split", None, "Splits to score (default: the config's eval splits).")
  flags.DEFINE_float("frame_interval", 1.0, "Seconds between scored frames.")
  flags.DEFINE_string("device", "cpu", "torch device.")
  flags.mark_flags_as_required(["config", "out"])
  cli.run_app(main, __doc__, __file__)
