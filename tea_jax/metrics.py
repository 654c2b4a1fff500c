"""Span decoding and the moment-retrieval metrics (docs/design.md section 11).

Times and IoU are float64 and follow EMB's formula order (i d / v_len, (j + 1) d / v_len): a float32
IoU of exactly 0.7 comes out as 0.69999999 and misses R1@0.7, and (j + 1) / v_len * d is not always
(j + 1) d / v_len (12 / 21 * 21 = 12.000001 in float32).
"""

import jax
import jax.numpy as jnp
import numpy as np

THRESHOLDS = (0.3, 0.5, 0.7)


def span_probabilities(start_prob: jax.Array, end_prob: jax.Array) -> jax.Array:
  """(..., L, L) P[i, j] = p_s[i] p_e[j] for i <= j and 0 below the diagonal (end before start)."""
  return jnp.triu(start_prob[..., :, None] * end_prob[..., None, :])


def decode_spans(start_prob: jax.Array, end_prob: jax.Array) -> tuple[jax.Array, ...]:
  """Best (i, j), i <= j, of the upper triangle of outer(p_s, p_e), and its probability.

  i = argmax_i max_j P, j = argmax_j max_i P (EMB's extract_index; both maxima are the same cell).
  """
  outer = span_probabilities(start_prob, end_prob)  # (B, L, L)
  start = jnp.argmax(outer.max(axis=2), axis=1)
  end = jnp.argmax(outer.max(axis=1), axis=1)
  return start, end, outer.max(axis=(1, 2))


def top_spans(start_prob, end_prob, k: int) -> list[tuple[int, int, float]]:
  """The k most probable spans (i, j, P[i, j]), i <= j, of one query's (L,) probabilities, best
  first; ties keep row-major order, so the first equals decode_spans' span when it is unique."""
  outer = np.asarray(span_probabilities(jnp.asarray(start_prob), jnp.asarray(end_prob)))  # (L, L)
  flat = np.argsort(-outer, axis=None, kind="stable")[:k]
  width = outer.shape[1]
  return [(int(f // width), int(f % width), float(outer.flat[f])) for f in flat]


def index_to_time(start, end, v_len, duration) -> tuple[np.ndarray, np.ndarray]:
  """Snippet indices -> seconds, float64: (i d / v_len, (j + 1) d / v_len), in that order."""
  v_len = np.asarray(v_len, np.float64)
  duration = np.asarray(duration, np.float64)
  return (np.asarray(start, np.float64) * duration / v_len,
          (np.asarray(end, np.float64) + 1.0) * duration / v_len)


# The union is clamped here (EMB's calculate_batch_iou): only two empty intervals come this close.
MIN_UNION = 1e-5


def iou(a_start, a_end, b_start, b_end, xp=np):
  """Temporal IoU of the intervals [a_start, a_end] and [b_start, b_end], element-wise: 0 when they
  are disjoint, and for an interval whose start comes after its end. With `xp=np` (evaluation,
  labels) the times are float64; the losses pass `xp=jax.numpy` and float32 arrays."""
  if xp is np:
    a_start, a_end, b_start, b_end = (
        np.asarray(x, np.float64) for x in (a_start, a_end, b_start, b_end))
  inter = xp.maximum(xp.minimum(a_end, b_end) - xp.maximum(a_start, b_start), 0.0)
  union = xp.maximum(xp.maximum(a_end, b_end) - xp.minimum(a_start, b_start), MIN_UNION)
  return inter / union


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


def nms(starts, ends, scores, iou_threshold: float, max_keep: int | None = None) -> np.ndarray:
  """Greedy temporal non-maximum suppression: the indices of the intervals kept, best score first.

  The best remaining interval is kept and every remaining one whose IoU with it exceeds
  `iou_threshold` is dropped (strictly greater, as Moment-DETR's temporal_nms); equal scores keep
  input order. Stops after `max_keep` intervals. Vectorised over the candidates, so a long video's
  hundreds of thousands of window spans cost max_keep passes.
  """
  starts, ends, scores = (np.asarray(x, np.float64) for x in (starts, ends, scores))
  order = np.argsort(-scores, kind="stable")
  starts, ends = starts[order], ends[order]
  alive = np.ones(len(order), bool)
  kept = []
  limit = len(order) if max_keep is None else max_keep
  while len(kept) < limit:
    remaining = np.flatnonzero(alive)
    if not len(remaining):
      break
    best = remaining[0]  # the order is by score: the first alive one is the best
    kept.append(order[best])
    alive[remaining] = iou(starts[best], ends[best], starts[remaining],
                           ends[remaining]) <= iou_threshold
    alive[best] = False
  return np.asarray(kept, np.int64)
