"""Snippet labels of a moment (docs/design.md section 10, EMB's time_to_index)."""

import numpy as np

from tea_jax import metrics


def moment_labels(start: float, end: float, v_len: int, duration: float) -> tuple[int, int]:
  """(s, e): the (i, j) of the full row-major v_len x v_len grid (j < i included) whose span
  [i d / v_len, (j + 1) d / v_len] (float32 times) has the highest IoU with [start, end]; the first
  maximum wins; all-zero IoU gives (0, 0)."""
  span_start = np.arange(0, v_len).astype(np.float32) / float(v_len) * duration  # float32
  span_end = np.arange(1, v_len + 1).astype(np.float32) / float(v_len) * duration
  starts = span_start.astype(np.float64)[:, None]  # (v_len, 1): i
  ends = span_end.astype(np.float64)[None, :]  # (1, v_len): j
  best = int(np.argmax(metrics.iou(starts, ends, start, end)))  # row-major: first maximum wins
  return best // v_len, best % v_len
