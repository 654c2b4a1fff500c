"""Span decoding and R1 / mIoU against hand-worked cases."""

import numpy as np

from tea_jax import metrics


def test_decode_picks_the_best_upper_triangle_cell(rng):
  ps = rng.dirichlet(np.ones(7), size=5).astype(np.float32)
  pe = rng.dirichlet(np.ones(7), size=5).astype(np.float32)
  start, end, score = metrics.decode_spans(ps, pe)
  for b in range(5):
    best = max(((i, j) for i in range(7) for j in range(i, 7)), key=lambda ij: ps[b, ij[0]] *
               pe[b, ij[1]])
    assert (int(start[b]), int(end[b])) == best
    np.testing.assert_allclose(float(score[b]), ps[b, best[0]] * pe[b, best[1]], rtol=1e-6)
  # An end before every likely start: the triangle forbids (3, 1).
  ps1 = np.array([[0.0, 0.1, 0.1, 0.8]], np.float32)
  pe1 = np.array([[0.1, 0.8, 0.05, 0.05]], np.float32)
  start, end, _ = metrics.decode_spans(ps1, pe1)
  assert int(start[0]) <= int(end[0])


def test_times_iou_and_summary_by_hand():
  start, end = metrics.index_to_time(np.array([0, 5]), np.array([4, 9]), np.array([10, 10]),
                                     np.array([20.0, 20.0]))
  np.testing.assert_allclose(start, [0.0, 10.0])
  np.testing.assert_allclose(end, [10.0, 20.0])
  ious = metrics.iou(np.array([0.0, 10.0, 0.0]), np.array([10.0, 20.0, 1.0]),
                     np.array([5.0, 10.0, 5.0]), np.array([10.0, 15.0, 6.0]))
  np.testing.assert_allclose(ious, [0.5, 0.5, 0.0])
  summary = metrics.summarise(np.array([0.8, 0.6, 0.4, 0.1]))
  assert summary["r1@0.3"] == 75.0 and summary["r1@0.5"] == 50.0 and summary["r1@0.7"] == 25.0
  np.testing.assert_allclose(summary["miou"], 47.5)
  np.testing.assert_allclose(summary["r1_sum_miou"], 75 + 50 + 25 + 47.5)
