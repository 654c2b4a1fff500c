"""Span decoding and the moment-retrieval metrics (docs/design.md section 11)."""

import jax
import jax.numpy as jnp
import numpy as np

THRESHOLDS = (0.3, 0.5, 0.7)


def decode_spans(start_prob: jax.Array, end_prob: jax.Array) -> tuple[jax.Array, ...]:
  """Best (i, j), i <= j, of the upper triangle of outer(p_s, p_e), and its probability.

  i = argmax_i max_j P, j = argmax_j max_i P (EMB's extract_index; both maxima are the same cell).
  """
  outer = jnp.triu(start_prob[:, :, None] * end_prob[:, None, :])  # (B, L, L)
  start = jnp.argmax(outer.max(axis=2), axis=1)
  end = jnp.argmax(outer.max(axis=1), axis=1)
  return start, end, outer.max(axis=(1, 2))


def index_to_time(start, end, v_len, duration):
  """Snippet indices -> seconds, float32: (i d / v_len, (j + 1) d / v_len)."""
  v_len = np.asarray(v_len, np.float32)
  duration = np.asarray(duration, np.float32)
  return (np.asarray(start, np.float32) / v_len * duration,
          (np.asarray(end, np.float32) + 1) / v_len * duration)


def iou(pred_start, pred_end, true_start, true_end) -> np.ndarray:
  """Temporal IoU of predicted and true moments in seconds (0 when disjoint)."""
  inter = np.minimum(pred_end, true_end) - np.maximum(pred_start, true_start)
  union = np.maximum(pred_end, true_end) - np.minimum(pred_start, true_start)
  return np.maximum(inter, 0.0) / np.maximum(union, 1e-12)


def summarise(ious: np.ndarray) -> dict[str, float]:
  """R1@IoU=m (percent with IoU >= m) for m in 0.3/0.5/0.7, mIoU (x100), and EMB's selection sum."""
  ious = np.asarray(ious, np.float64)
  if ious.size == 0:
    raise ValueError("no predictions to evaluate")
  out = {f"r1@{m}": float(np.mean(ious >= m) * 100.0) for m in THRESHOLDS}
  out["miou"] = float(ious.mean() * 100.0)
  out["r1_sum_miou"] = sum(out[f"r1@{m}"] for m in THRESHOLDS) + out["miou"]
  out["count"] = int(ious.size)
  return out
