"""Content guides, bound guides and the guide convolution against brute-force loops."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from tea_jax.model.guides import GuideConv, bound_guides, content_guides, cumulative_max
from tea_jax.model.proposals import proposal_map
from tea_jax.model.config import ModelConfig


def brute_content_guides(x, mask):
  b, l, d = x.shape
  left, right = np.zeros_like(x), np.zeros_like(x)
  for i in range(b):
    for t in range(l):
      if not mask[i, t]:
        continue
      before = [x[i, k] for k in range(t) if mask[i, k]]
      after = [x[i, k] for k in range(t + 1, l) if mask[i, k]]
      if before:
        left[i, t] = np.max(before, axis=0)
      if after:
        right[i, t] = np.max(after, axis=0)
  return left, right


@pytest.mark.parametrize("method", ["scan", "window"])
def test_content_guides_match_brute_force(rng, method):
  lengths = [1, 5, 9, 13]
  l, d = 13, 4
  x = rng.normal(size=(len(lengths), l, d)).astype(np.float32)
  mask = (np.arange(l)[None] < np.array(lengths)[:, None]).astype(np.float32)
  left, right = content_guides(x, mask, method)
  ref_left, ref_right = brute_content_guides(x, mask)
  np.testing.assert_array_equal(np.asarray(left), ref_left)
  np.testing.assert_array_equal(np.asarray(right), ref_right)


def test_content_guide_gradients_agree_between_methods(rng):
  # Without ties both methods send each output's gradient to the one frame holding the max.
  lengths, l, d = [4, 11, 11], 11, 3
  x = rng.normal(size=(3, l, d)).astype(np.float32)
  mask = (np.arange(l)[None] < np.array(lengths)[:, None]).astype(np.float32)
  probe = rng.normal(size=(2, 3, l, d)).astype(np.float32)

  def loss(x, method):
    left, right = content_guides(x, mask, method)
    return jnp.sum(left * probe[0]) + jnp.sum(right * probe[1])

  scan, window = (jax.grad(loss)(x, m) for m in ("scan", "window"))
  np.testing.assert_allclose(window, scan, rtol=1e-6, atol=1e-6)
  # Brute force: frame k of sample 0 receives the probes of the outputs whose max it is.
  left, right = brute_content_guides(x, mask)
  expected = np.zeros_like(x)
  for t in range(l):
    for side, guide in enumerate((left, right)):
      hit = (x[0] == guide[0, t]) & (guide[0, t] != 0)
      expected[0] += hit * probe[side, 0, t]
  np.testing.assert_allclose(np.asarray(window)[0], expected[0], rtol=1e-6, atol=1e-6)


def test_cumulative_max_refuses_an_unknown_method(rng):
  with pytest.raises(ValueError, match="window"):
    cumulative_max(np.zeros((1, 3, 1), np.float32), method="tree")


def test_content_guides_ignore_masked_frames_even_if_larger(rng):
  x = np.array([[[1.0], [5.0], [2.0], [100.0]]], np.float32)
  mask = np.array([[1, 1, 1, 0]], np.float32)
  left, right = content_guides(x, mask)
  np.testing.assert_array_equal(np.asarray(left)[0, :, 0], [0, 1, 5, 0])
  np.testing.assert_array_equal(np.asarray(right)[0, :, 0], [5, 2, 0, 0])


def brute_bound_guides(frames, bounds, pmask, cell):
  """Cell c = max of frames[8c .. 8c+7], -1e-30 beyond the padded length; gathered at bounds."""
  b, l, d = frames.shape
  n = -(-l // cell)
  cells = np.zeros((b, n, d), np.float32)
  for i in range(b):
    for c in range(n):
      rows = [frames[i, t] if t < l else np.full(d, -1e-30, np.float32)
              for t in range(c * cell, c * cell + cell)]
      cells[i, c] = np.max(rows, axis=0)
  left = np.stack([[cells[i, bounds[i, p, 0] // cell] * pmask[i, p] for p in range(bounds.shape[1])]
                   for i in range(b)])
  right = np.stack([[cells[i, bounds[i, p, 1] // cell] * pmask[i, p]
                     for p in range(bounds.shape[1])] for i in range(b)])
  return left, right


def test_bound_guides_match_brute_force(rng):
  lengths, l, d = [3, 17, 20], 20, 3
  frames = rng.normal(size=(3, l, d)).astype(np.float32) - 0.5
  mask = (np.arange(l)[None] < np.array(lengths)[:, None]).astype(np.float32)
  _, pmask, bounds = proposal_map(frames, mask, 8)
  left, right = bound_guides(frames, bounds, pmask, 8)
  ref_left, ref_right = brute_bound_guides(frames, np.asarray(bounds), np.asarray(pmask), 8)
  np.testing.assert_array_equal(np.asarray(left), ref_left)
  np.testing.assert_array_equal(np.asarray(right), ref_right)


def test_guide_conv_matches_depthwise_loop(rng):
  b, l, d, k = 2, 9, 4, 7
  left, right, x = (rng.normal(size=(b, l, d)).astype(np.float32) for _ in range(3))
  conv = GuideConv(ModelConfig(hidden=d, num_heads=1), k)
  params = conv.init(jax.random.key(0), left, right, x, train=False)["params"]
  ours = np.asarray(conv.apply({"params": params}, left, right, x, train=False))
  w = np.asarray(params["depthwise"])  # (k, source, D)
  stack = np.stack([left, right, x], -1)  # (B, L, D, 3)
  depth = np.zeros((b, l, d))
  for t in range(l):
    for dt in range(k):
      src = t + dt - k // 2
      if 0 <= src < l:
        depth[:, t] += np.einsum("bcs,sc->bc", stack[:, src], w[dt])
  pw = params["pointwise"]
  y = depth @ np.asarray(pw["kernel"]) + np.asarray(pw["bias"])
  mu, var = y.mean(-1, keepdims=True), y.var(-1, keepdims=True)
  ln = params["layer_norm"]
  y = (y - mu) / np.sqrt(var + 1e-6) * np.asarray(ln["scale"]) + np.asarray(ln["bias"])
  np.testing.assert_allclose(ours, np.maximum(y, 0), atol=2e-5)
