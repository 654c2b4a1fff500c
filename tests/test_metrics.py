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


def emb_time(index, v_len, duration):
  """EMB's formula order in Python floats (float64): index * duration / v_len."""
  return index * duration / v_len


def test_times_follow_the_reference_order_in_float64():
  # (j + 1) = 12, v_len = d = 21: 12 * 21 / 21 is exactly 12; 12 / 21 * 21 in float32 is 12.000001.
  start, end = metrics.index_to_time(np.array([2]), np.array([11]), np.array([21]),
                                     np.array([21.0]))
  assert start.dtype == np.float64 and end[0] == 12.0 and start[0] == 2.0
  # 3 / 10 * 10 is 3.0000000000000004 even in float64; 3 * 10 / 10 is 3.
  start, end = metrics.index_to_time(3, 6, 10, 10.0)
  assert float(start) == 3.0 == emb_time(3, 10, 10.0) and float(end) == 7.0
  rng = np.random.default_rng(1)
  v_len = rng.integers(8, 129, 200)
  duration = np.round(rng.uniform(5, 200, 200), 2)
  i = rng.integers(0, 8, 200)
  j = i + rng.integers(0, 8, 200)
  start, end = metrics.index_to_time(i, j, v_len, duration)
  assert start.tolist() == [emb_time(int(a), int(n), float(d))
                            for a, n, d in zip(i, v_len, duration)]
  assert end.tolist() == [emb_time(int(b) + 1, int(n), float(d))
                          for b, n, d in zip(j, v_len, duration)]


def test_an_iou_of_exactly_the_threshold_is_a_hit():
  # Prediction (2, 12) on truth (2, 9): IoU 7 / 10, exactly the float64 nearest to 0.7.
  overlap = metrics.iou(2.0, 12.0, 2.0, 9.0)
  assert overlap.dtype == np.float64 and overlap == 0.7
  assert metrics.summarise(np.array([overlap]))["r1@0.7"] == 100.0
  # Through the snippet times: v_len = d = 21, (i, j) = (2, 11) gives (2 s, 12 s).
  start, end = metrics.index_to_time(2, 11, 21, 21.0)
  assert metrics.iou(start, end, 2.0, 9.0) >= 0.7
  # float32 times or IoU lose it (what the metric must not do).
  assert float(np.float32(7.0) / np.float32(10.0)) < 0.7
  # A truth of (3, 5.8) and a prediction (3, 7) of v_len = d = 10: 2.8 / 4 == 0.7 exactly.
  start, end = metrics.index_to_time(3, 6, 10, 10.0)
  assert metrics.iou(start, end, 3.0, 5.8) == (5.8 - 3.0) / (7.0 - 3.0) >= 0.7


def test_inverted_true_moment_has_zero_iou():
  # The reference keeps start > end moments; their IoU is 0 whatever the prediction.
  assert metrics.iou(np.array([0.0, 5.0]), np.array([30.0, 20.0]), 8.0, 7.0).tolist() == [0, 0]


def test_top_spans_by_hand_and_agrees_with_decode_spans(rng):
  start = np.array([0.1, 0.6, 0.3], np.float32)
  end = np.array([0.5, 0.2, 0.3], np.float32)
  # Upper triangle of outer(start, end): (0,0) .05 (0,1) .02 (0,2) .03 (1,1) .12 (1,2) .18 (2,2) .09
  got = metrics.top_spans(start, end, 3)
  assert [(i, j) for i, j, _ in got] == [(1, 2), (1, 1), (2, 2)]
  np.testing.assert_allclose([p for _, _, p in got], [0.18, 0.12, 0.09], rtol=1e-6)
  ps = rng.dirichlet(np.ones(9), size=6).astype(np.float32)
  pe = rng.dirichlet(np.ones(9), size=6).astype(np.float32)
  start, end, score = metrics.decode_spans(ps, pe)
  for b in range(6):
    (i, j, p), = metrics.top_spans(ps[b], pe[b], 1)
    assert (i, j) == (int(start[b]), int(end[b])) and p == float(score[b])


def test_nms_by_hand():
  # (start, end, score); worked by hand: 5 is best; 1 overlaps 0 by IoU 9/10; 2 overlaps 5 and 0
  # by 5/15 each; 4 ties with 3 (input order keeps 3) and overlaps it by 9/10.
  spans = [(0, 10, 0.9), (1, 10, 0.8), (5, 15, 0.7), (20, 30, 0.6), (21, 30, 0.6),
           (10, 20, 0.95)]
  starts, ends, scores = (np.array(column, np.float64) for column in zip(*spans))
  assert metrics.nms(starts, ends, scores, 0.5).tolist() == [5, 0, 2, 3]
  assert metrics.nms(starts, ends, scores, 0.3).tolist() == [5, 0, 3]
  assert metrics.nms(starts, ends, scores, 0.5, max_keep=2).tolist() == [5, 0]
  # Suppression needs an IoU strictly above the threshold: at 0.9 nothing is dropped.
  assert metrics.nms(starts, ends, scores, 0.9).tolist() == [5, 0, 1, 2, 3, 4]
  assert metrics.nms([], [], [], 0.5).tolist() == []


def test_nms_agrees_with_a_plain_loop(rng):
  starts = rng.integers(0, 50, 300).astype(np.float64)
  ends = starts + rng.integers(1, 20, 300)
  scores = np.round(rng.random(300), 2)  # ties happen
  kept = []
  for k in sorted(range(300), key=lambda k: -scores[k]):  # sorted() is stable
    union = lambda a, b: max(ends[a], ends[b]) - min(starts[a], starts[b])
    inter = lambda a, b: max(0.0, min(ends[a], ends[b]) - max(starts[a], starts[b]))
    if all(inter(k, m) / union(k, m) <= 0.4 for m in kept):
      kept.append(k)
  assert metrics.nms(starts, ends, scores, 0.4).tolist() == kept
