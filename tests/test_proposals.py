"""The proposal map (features, mask, bounds) against a brute-force loop (docs/design.md section 6)."""

import numpy as np
import pytest

from tea_jax.model.proposals import proposal_map, scatter_upper, upper_triangle


def brute_proposals(frames, lengths, cell=8):
  b, l, d = frames.shape
  n = -(-l // cell)
  feats = np.zeros((b, n * n, d), np.float32)
  mask = np.zeros((b, n * n), np.float32)
  bounds = np.zeros((b, n * n, 2), np.int64)
  for s in range(b):
    v_len = lengths[s]

    def value(t):
      if t < v_len:
        return frames[s, t]
      return np.full(d, -1e30 if t < l else -1e-30, np.float32)

    cells = [np.max([value(t) for t in range(c * cell, c * cell + cell)], axis=0) for c in range(n)]
    for i in range(n):
      for j in range(n):
        if j >= i and j * cell < v_len:
          p = i * n + j
          feats[s, p] = np.max(cells[i:j + 1], axis=0)
          mask[s, p] = 1
          bounds[s, p] = (min(cell * i, v_len - 1), min(cell * j + cell - 1, v_len - 1))
  return feats, mask, bounds


@pytest.mark.parametrize("length,lengths", [(8, [8, 1]), (13, [13, 5, 9]), (45, [45, 1, 33, 40]),
                                            (24, [16, 17, 24])])
def test_proposal_map_matches_brute_force(rng, length, lengths):
  frames = rng.normal(size=(len(lengths), length, 5)).astype(np.float32) - 0.3
  mask = (np.arange(length)[None] < np.array(lengths)[:, None]).astype(np.float32)
  feats, pmask, bounds = proposal_map(frames, mask, 8)
  ref_feats, ref_mask, ref_bounds = brute_proposals(frames, lengths)
  np.testing.assert_array_equal(np.asarray(pmask), ref_mask)
  np.testing.assert_array_equal(np.asarray(bounds), ref_bounds)
  np.testing.assert_array_equal(np.asarray(feats), ref_feats)


def test_tail_cells_use_minus_1e_30_beyond_the_padded_length():
  # A full-length sample whose channel is all negative: its last (partial) cell maxes to -1e-30.
  frames = -np.ones((1, 12, 1), np.float32)
  feats, _, _ = proposal_map(frames, np.ones((1, 12), np.float32), 8)
  assert np.asarray(feats)[0, 1 * 2 + 1, 0] == np.float32(-1e-30)  # proposal (1, 1)
  assert np.asarray(feats)[0, 0, 0] == -1.0  # proposal (0, 0): a complete cell


def test_upper_triangle_round_trip(rng):
  n = 5
  tri = upper_triangle(n)
  assert len(tri) == n * (n + 1) // 2
  assert all(p // n <= p % n for p in tri)
  values = rng.normal(size=(2, n * n, 3)).astype(np.float32)
  full = np.asarray(scatter_upper(values[:, tri], n))
  lower = np.array([p for p in range(n * n) if p // n > p % n])
  np.testing.assert_array_equal(full[:, tri], values[:, tri])
  assert np.all(full[:, lower] == 0)
