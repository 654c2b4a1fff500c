"""Masked multi-head attention and the post-norm attention layer against numpy."""

import jax
import numpy as np

from tea_jax.model.layers import AttentionLayer, Dropout, MultiHeadAttention, cross_mask
from tea_jax.model.config import ModelConfig


def np_softmax(x, axis=-1):
  e = np.exp(x - x.max(axis=axis, keepdims=True))
  return e / e.sum(axis=axis, keepdims=True)


def np_mha(params, q_in, k_in, v_in, mask, heads):
  """Loop-per-head reference: additive -1e30 masking, scale 1/sqrt(dh), no output projection."""
  lin = lambda name, x: x @ np.asarray(params[name]["kernel"]) + np.asarray(params[name]["bias"])
  q, k, v = lin("query", q_in), lin("key", k_in), lin("value", v_in)
  d = q.shape[-1]
  dh = d // heads
  out = np.zeros(q.shape, np.float64)
  for h in range(heads):
    sl = slice(h * dh, (h + 1) * dh)
    scores = q[..., sl] @ np.swapaxes(k[..., sl], 1, 2) / np.sqrt(dh)
    scores = scores + (1.0 - mask) * -1e30
    out[..., sl] = np_softmax(scores) @ v[..., sl]
  return out


def np_layer_norm(x, p, eps=1e-6):
  mu = x.mean(-1, keepdims=True)
  var = ((x - mu) ** 2).mean(-1, keepdims=True)
  return (x - mu) / np.sqrt(var + eps) * np.asarray(p["scale"]) + np.asarray(p["bias"])


def test_masked_mha_matches_numpy_and_fully_masked_rows_are_uniform(rng):
  b, lq, lk, d, heads = 2, 5, 7, 8, 2
  q_in = rng.normal(size=(b, lq, d)).astype(np.float32)
  kv = rng.normal(size=(b, lk, d)).astype(np.float32)
  tmask = np.array([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1]], np.float32)
  smask = np.array([[1, 1, 1, 1, 0, 0, 0], [1, 1, 1, 1, 1, 1, 1]], np.float32)
  mask = np.asarray(cross_mask(tmask, smask))
  mha = MultiHeadAttention(ModelConfig(hidden=d, num_heads=heads))
  params = mha.init(jax.random.key(0), q_in, kv, kv, mask, train=False)["params"]
  ours = np.asarray(mha.apply({"params": params}, q_in, kv, kv, mask, train=False))
  np.testing.assert_allclose(ours, np_mha(params, q_in, kv, kv, mask, heads), atol=1e-5)
  # Padded target rows see uniform weights over ALL keys: the mean of the projected values.
  values = kv @ np.asarray(params["value"]["kernel"]) + np.asarray(params["value"]["bias"])
  np.testing.assert_allclose(ours[0, 3], values[0].mean(0), atol=1e-5)


def test_attention_layer_is_post_norm_with_ffn(rng):
  b, l, d = 2, 6, 8
  x = rng.normal(size=(b, l, d)).astype(np.float32)
  mask = np.ones((b, 1, l), np.float32)
  mask[0, 0, 4:] = 0
  layer = AttentionLayer(ModelConfig(hidden=d, num_heads=2))
  params = layer.init(jax.random.key(1), x, x, x, mask, train=False)["params"]
  ours = np.asarray(layer.apply({"params": params}, x, x, x, mask, train=False))
  h = np_layer_norm(x + np_mha(params["attention"], x, x, x, mask, 2), params["norm1"])
  f = params["ffn"]
  hidden = np.maximum(h @ np.asarray(f["dense_in"]["kernel"]) + np.asarray(f["dense_in"]["bias"]),
                      0)
  ffn = hidden @ np.asarray(f["dense_out"]["kernel"]) + np.asarray(f["dense_out"]["bias"])
  np.testing.assert_allclose(ours, np_layer_norm(h + ffn, params["norm2"]), atol=1e-5)


def test_dropout_rate_scale_and_determinism():
  x = np.ones((200, 500), np.float32)
  drop = Dropout(0.2, deterministic=False)
  y = np.asarray(drop.apply({}, x, rngs={"dropout": jax.random.key(3)}))
  kept = y != 0
  assert abs(kept.mean() - 0.8) < 0.005  # 100k draws: 4 sigma is about 0.005
  # Inverted dropout keeps the expectation: kept values are 1 / P(keep).
  np.testing.assert_allclose(y[kept], 65536.0 / round(0.8 * 65536), rtol=1e-6)
  y2 = np.asarray(drop.apply({}, x, rngs={"dropout": jax.random.key(3)}))
  np.testing.assert_array_equal(y, y2)
  eval_drop = Dropout(0.2, deterministic=True)
  np.testing.assert_array_equal(np.asarray(eval_drop.apply({}, x)), x)
