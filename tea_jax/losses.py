"""Training losses of EMB/TEA (docs/design.md section 10): elastic-boundary span NLL, highlight BCE,
proposal-ranking BCE, and the epoch-dependent IoU threshold that picks the pseudo span."""

import dataclasses

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from tea_jax import config_checks, metrics


@dataclasses.dataclass(frozen=True)
class LossConfig:
  """Loss weights and label rules (EMB's defaults)."""

  # Weight of the highlight (gate) BCE in the total loss.
  highlight_weight: float = 5.0
  # Weight of the proposal-ranking BCE in the total loss.
  rank_weight: float = 1.0
  # Ranking targets: clip((IoU - rank_min_iou) / (rank_max_iou - rank_min_iou), 0, 1).
  rank_min_iou: float = 0.3
  rank_max_iou: float = 0.7
  # The highlight region is extended on both sides by this fraction of its length (in snippets).
  highlight_extension: float = 0.1
  # End of the highlight region before extension: "min" of (true end, pseudo end) as in EMB's code,
  # or "max" as the TEA paper's Eq. 16 writes it.
  highlight_end: str = "min"

  def __post_init__(self):
    config_checks.check_loss(dataclasses.asdict(self))

  @classmethod
  def from_config(cls, config) -> "LossConfig":
    """The `loss` section of an experiment config (the defaults where it has none)."""
    section = config["loss"] if config is not None and "loss" in config else {}
    return cls(**dict(section))


def loss_defaults() -> ml_collections.ConfigDict:
  """LossConfig's defaults as the ConfigDict that experiment configs hold under `loss`."""
  return ml_collections.ConfigDict(dataclasses.asdict(LossConfig()))


def clamped_log(x: jax.Array) -> jax.Array:
  """log(x) clamped at -100 like torch's BCELoss, with a finite (zero) gradient at x = 0.

  The double `where` keeps log's 1/x away from x = 0 (a guard value such as 1e-44 would not do:
  XLA's CPU flushes such denormals to zero).
  """
  positive = x > 0
  return jnp.where(positive, jnp.maximum(jnp.log(jnp.where(positive, x, 1.0)), -100.0), -100.0)


def bce(prob: jax.Array, target: jax.Array) -> jax.Array:
  """Element-wise binary cross-entropy with torch's log clamp."""
  return -(target * clamped_log(prob) + (1.0 - target) * clamped_log(1.0 - prob))


def iou_threshold(epoch, num_epochs) -> jax.Array:
  """thr(epoch) = 0.5 + 0.5 (1 - sigmoid((epoch / E - 0.5) / 0.05)), float32, 0-based epoch."""
  progress = jnp.asarray(epoch, jnp.float32) / jnp.asarray(num_epochs, jnp.float32)
  return 0.5 + 0.5 * (1.0 - jax.nn.sigmoid((progress - 0.5) / 0.05))


def pseudo_span(outputs, start_label, end_label, threshold):
  """The elastic pseudo span (ps, pe): the best-scored valid proposal [b0, b1 + 1) whose IoU with
  [s, e + 1) reaches `threshold`, else (s, e + 1). pe stays exclusive (EMB's quirk). No gradient."""
  bounds = outputs["proposal_bounds"]
  scores = jax.lax.stop_gradient(outputs["proposal_scores"])
  s = start_label.astype(jnp.float32)[:, None]
  e = end_label.astype(jnp.float32)[:, None]
  b0 = bounds[..., 0].astype(jnp.float32)
  b1 = bounds[..., 1].astype(jnp.float32) + 1.0
  overlap = metrics.iou(b0, b1, s, e + 1.0, xp=jnp)
  candidate = (overlap >= threshold) & (outputs["proposal_mask"] > 0)
  best = jnp.argmax(jnp.where(candidate, scores, -jnp.inf), axis=1)
  chosen = jnp.take_along_axis(bounds, best[:, None, None], axis=1)[:, 0]  # (B, 2)
  has = candidate.any(axis=1)
  ps = jnp.where(has, chosen[:, 0], start_label)
  pe = jnp.where(has, chosen[:, 1] + 1, end_label + 1)
  return ps.astype(jnp.int32), pe.astype(jnp.int32)


def span_nll(prob, label, pseudo):
  """mean_b -log sum_{i = min(label, pseudo)}^{max(label, pseudo)} prob_i."""
  idx = jnp.arange(prob.shape[1])[None]
  lo = jnp.minimum(label, pseudo)[:, None]
  hi = jnp.maximum(label, pseudo)[:, None]
  return -jnp.log(jnp.sum(prob * ((idx >= lo) & (idx <= hi)), axis=1)).mean()


def highlight_loss(highlight, video_mask, start_label, end_label, ps, pe, cfg):
  """Weighted BCE of the gate against the (extended) union of true and pseudo spans."""
  v_len = video_mask.sum(axis=1).astype(jnp.int32)
  a = jnp.minimum(start_label, ps)
  b = jnp.minimum(end_label, pe) if cfg.highlight_end == "min" else jnp.maximum(end_label, pe)
  ext = jnp.round((b - a + 1).astype(jnp.float32) * cfg.highlight_extension).astype(jnp.int32)
  a = jnp.maximum(a - ext, 0)
  b = jnp.minimum(b + ext, v_len - 1)
  idx = jnp.arange(highlight.shape[1])[None]
  labels = ((idx >= a[:, None]) & (idx <= b[:, None])).astype(jnp.float32)
  weights = jnp.where(labels > 0, 2.0, 1.0)
  per_frame = bce(highlight, labels) * weights * video_mask
  return per_frame.sum() / (video_mask.sum() + 1e-12)


def rank_loss(outputs, start_label, end_label, video_mask, duration, cfg):
  """BCE of the ranker against clip((IoU_seconds - min) / (max - min), 0, 1), valid proposals."""
  v_len = video_mask.sum(axis=1)[:, None]
  unit = duration.astype(jnp.float32)[:, None] / v_len  # seconds per snippet
  bounds = outputs["proposal_bounds"].astype(jnp.float32)
  overlap = metrics.iou(bounds[..., 0] * unit, (bounds[..., 1] + 1.0) * unit,
                        start_label[:, None] * unit, (end_label[:, None] + 1.0) * unit, xp=jnp)
  target = jnp.clip((overlap - cfg.rank_min_iou) / (cfg.rank_max_iou - cfg.rank_min_iou), 0, 1)
  mask = outputs["proposal_mask"]
  return (bce(outputs["proposal_scores"], target) * mask).sum() / mask.sum()


def total_loss(config: ml_collections.ConfigDict, outputs, batch, threshold):
  """L = L_vmr + w_hl L_highlight + w_rank L_rank; returns (total, {"vmr", "highlight", "rank"}).

  `outputs` is the forward dict; `batch` adds start_label, end_label (B,) int32 (snippet indices)
  and duration (B,) float32 (seconds); `threshold` is iou_threshold(epoch, epochs) (an argument,
  so nothing recompiles between epochs).
  """
  cfg = LossConfig.from_config(config)
  s = jnp.asarray(batch["start_label"], jnp.int32)
  e = jnp.asarray(batch["end_label"], jnp.int32)
  video_mask = jnp.asarray(batch["video_mask"], jnp.float32)
  ps, pe = pseudo_span(outputs, s, e, jnp.asarray(threshold, jnp.float32))
  vmr = span_nll(outputs["start_prob"], s, ps) + span_nll(outputs["end_prob"], e, pe)
  hl = highlight_loss(outputs["highlight"], video_mask, s, e, ps, pe, cfg)
  rank = rank_loss(outputs, s, e, video_mask, jnp.asarray(batch["duration"]), cfg)
  total = vmr + cfg.highlight_weight * hl + cfg.rank_weight * rank
  return total, {"vmr": vmr, "highlight": hl, "rank": rank}


def numpy_threshold_schedule(num_epochs: int) -> np.ndarray:
  """thr for every epoch, for logging and tests."""
  return np.asarray(iou_threshold(np.arange(num_epochs), num_epochs))
