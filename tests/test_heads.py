"""Fusion, gate, BiLSTM predictor and ranker against numpy references (docs/design.md section 8)."""

import dataclasses

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.experimental import rnn

from tea_jax.model import bilstm
from tea_jax.model.fusion import ContextQueryFusion, HighlightGate
from tea_jax.model.bilstm import BiLSTM
from tea_jax.model.span_predictor import SpanPredictor, predict_spans
from tea_jax.model.tea import TEA
from tea_jax.model.ranker import Ranker, valid_count_weights
from tea_jax.model.config import ModelConfig


def np_softmax(x, axis):
  e = np.exp(x - x.max(axis=axis, keepdims=True))
  return e / e.sum(axis=axis, keepdims=True)


def lin(p, x):
  return x @ np.asarray(p["kernel"], np.float64) + np.asarray(p["bias"], np.float64)


def test_context_query_fusion_matches_numpy(rng):
  b, lc, w, d = 2, 6, 4, 8
  ctx = rng.normal(size=(b, lc, d)).astype(np.float32)
  qry = rng.normal(size=(b, w, d)).astype(np.float32)
  cmask = np.array([[1] * 6, [1, 1, 1, 0, 0, 0]], np.float32)
  qmask = np.array([[1, 1, 1, 1], [1, 1, 0, 0]], np.float32)
  mod = ContextQueryFusion(ModelConfig(hidden=d, num_heads=1))
  params = mod.init(jax.random.key(0), ctx, qry, cmask, qmask, train=False)["params"]
  ours = np.asarray(mod.apply({"params": params}, ctx, qry, cmask, qmask, train=False))
  p = {k: np.asarray(v, np.float64) if not isinstance(v, dict) else v for k, v in params.items()}
  c, q = ctx.astype(np.float64), qry.astype(np.float64)
  s = (c @ p["w_c"])[:, :, None] + (q @ p["w_q"])[:, None, :] + (c * p["w_m"]) @ q.transpose(0, 2, 1)
  a = np_softmax(s + (1 - qmask[:, None, :]) * -1e30, 2)
  bm = np_softmax(s + (1 - cmask[:, :, None]) * -1e30, 1)
  c2q = a @ q
  q2c = a @ bm.transpose(0, 2, 1) @ c  # the reference's association: (A B^T) X
  x = lin(params["cqa_linear"], np.concatenate([c, c2q, c * c2q, c * q2c], -1))
  pool = np_softmax(q @ p["w_pool"] + (1 - qmask) * -1e30, 1)
  pooled = np.einsum("bw,bwd->bd", pool, q)[:, None].repeat(lc, 1)
  expected = np.maximum(lin(params["concat_linear"], np.concatenate([x, pooled], -1)), 0)
  np.testing.assert_allclose(ours, expected, atol=2e-5)


def test_gate_is_exactly_zero_on_padding(rng):
  x = rng.normal(size=(2, 5, 4)).astype(np.float32)
  mask = np.array([[1, 1, 1, 1, 1], [1, 1, 0, 0, 0]], np.float32)
  gate = HighlightGate()
  params = gate.init(jax.random.key(0), x, mask)["params"]
  gated, h = gate.apply({"params": params}, x, mask)
  logits = lin(params["dense"], x.astype(np.float64))[..., 0]
  expected = 1 / (1 + np.exp(-logits)) * mask
  np.testing.assert_allclose(np.asarray(h), expected, atol=1e-6)
  assert np.all(np.asarray(h)[1, 2:] == 0)
  np.testing.assert_allclose(np.asarray(gated), x * expected[..., None], atol=1e-6)


def np_lstm(x, w_ih, w_hh, b, reverse):
  """Plain PyTorch-convention LSTM (i, f, g, o) over the rows of x, from a zero state."""
  sig = lambda z: 1 / (1 + np.exp(-z))
  hid = np.zeros(w_hh.shape[0])
  mem = np.zeros(w_hh.shape[0])
  out = np.zeros((x.shape[0], w_hh.shape[0]))
  order = range(x.shape[0] - 1, -1, -1) if reverse else range(x.shape[0])
  for t in order:
    i, f, g, o = np.split(x[t] @ w_ih + hid @ w_hh + b, 4)
    mem = sig(f) * mem + sig(i) * np.tanh(g)
    hid = sig(o) * np.tanh(mem)
    out[t] = hid
  return out


def test_bilstm_respects_each_length_in_both_directions(rng):
  lengths, l, din, h = [7, 3, 1], 7, 5, 4
  x = rng.normal(size=(3, l, din)).astype(np.float32)
  mask = (np.arange(l)[None] < np.array(lengths)[:, None]).astype(np.float32)
  x_padded = x.copy()
  x_padded[mask == 0] = 99.0  # padded rows must not leak into any valid output
  mod = BiLSTM(h)
  params = mod.init(jax.random.key(0), x, mask)["params"]
  ours = np.asarray(mod.apply({"params": params}, x_padded, mask))
  p = {k: np.asarray(v, np.float64) for k, v in params.items()}
  for s, n in enumerate(lengths):
    for direction, cols, reverse in (("forward", slice(0, h), False),
                                     ("backward", slice(h, 2 * h), True)):
      ref = np_lstm(x[s, :n].astype(np.float64), p[f"{direction}_w_ih"], p[f"{direction}_w_hh"],
                    p[f"{direction}_b_ih"] + p[f"{direction}_b_hh"], reverse)
      np.testing.assert_allclose(ours[s, :n, cols], ref, atol=1e-5)
    assert np.all(ours[s, n:] == 0)


def ragged_lanes(rng, l=9, b=3, h=4, lengths=(9, 5, 1)):
  """Gate inputs, masks and weights of 4 lanes: two forward, two time-reversed (padding first)."""
  m_f = (np.arange(l)[:, None] < np.asarray(lengths)[None]).astype(np.float32)[..., None]
  mask = np.stack([m_f, m_f[::-1], m_f, m_f[::-1]], axis=1)  # (L, K, B, 1)
  gates = rng.normal(size=(l, 4, b, 4 * h)).astype(np.float32)
  w_hh = (rng.normal(size=(4, h, 4 * h)) * 0.5).astype(np.float32)
  return gates, mask, w_hh


def test_lstm_lanes_backward_equals_autodiff_of_its_forward(rng):
  # The hand-written VJP against JAX differentiating the same forward scan, with ragged masks and
  # both directions (the backward lanes read time-reversed inputs, padding first).
  gates, mask, w_hh = ragged_lanes(rng)
  probe = rng.normal(size=gates.shape[:-1] + (w_hh.shape[1],)).astype(np.float32)
  lanes = lambda a: tuple(a[:, k] for k in range(a.shape[1]))

  def loss(lstm, g, w):
    return jnp.sum(jnp.stack(lstm(lanes(g), lanes(mask), w), axis=1) * probe)

  autodiff = lambda g, m, w: bilstm._scan_forward(g, m, w)[0]  # pylint: disable=protected-access
  ours = jax.grad(lambda g, w: loss(bilstm.lstm_lanes, g, w), (0, 1))(gates, w_hh)
  theirs = jax.grad(lambda g, w: loss(autodiff, g, w), (0, 1))(gates, w_hh)
  for a, b_ in zip(ours, theirs):
    np.testing.assert_allclose(a, b_, rtol=1e-5, atol=1e-6)


def test_bilstms_together_equal_each_alone(rng, monkeypatch):
  # Two BiLSTMs in one recurrence (4 lanes) give what each gives alone, gradients included. (The
  # CPU runs the scans of several BiLSTMs apart: the test poses as another backend.)
  monkeypatch.setattr(jax, "default_backend", lambda: "gpu")
  lengths, l, din, h = [7, 3, 1], 7, 5, 4
  mask = (np.arange(l)[None] < np.array(lengths)[:, None]).astype(np.float32)
  xs = [rng.normal(size=(3, l, din)).astype(np.float32) for _ in range(2)]
  params = [BiLSTM(h).init(jax.random.key(n), xs[n], mask)["params"] for n in range(2)]
  probes = [rng.normal(size=(3, l, 2 * h)).astype(np.float32) for _ in range(2)]

  def together(params, xs):
    outs = bilstm.bilstms(params, xs, mask)
    return sum(jnp.sum(o * p) for o, p in zip(outs, probes)), outs

  def alone(params, xs):
    outs = [BiLSTM(h).apply({"params": p}, x, mask) for p, x in zip(params, xs)]
    return sum(jnp.sum(o * p) for o, p in zip(outs, probes)), outs

  (_, out_t), grads_t = jax.value_and_grad(together, (0, 1), has_aux=True)(params, xs)
  (_, out_a), grads_a = jax.value_and_grad(alone, (0, 1), has_aux=True)(params, xs)
  for a, b in zip(jax.tree.leaves((out_t, grads_t)), jax.tree.leaves((out_a, grads_a))):
    np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7)


def lstm_ref_bilstm(x, lengths, flat_weights, hidden):
  """JAX's reference of the cuDNN kernel, fed through JAX's unpacking of the cuDNN layout."""
  w_ih, w_hh, b_ih, b_hh = rnn.unpack_lstm_weights(flat_weights, x.shape[-1], hidden, 1, True)
  zeros = jnp.zeros((2, x.shape[0], hidden), x.dtype)
  out, _, _ = rnn.lstm_ref(x, zeros, zeros, w_ih, w_hh, b_ih, b_hh, lengths, x.shape[-1], hidden,
                           1, 0.0, True)
  return out


def test_cudnn_path_matches_scan_in_values_and_gradients(rng, monkeypatch):
  # No GPU here: the cuDNN call is swapped for JAX's reference of it, which checks everything of the
  # "cudnn" path but the kernel itself (weight packing, lengths, layout, zero padding, gradients).
  monkeypatch.setattr(bilstm, "cudnn_bilstm", lstm_ref_bilstm)
  lengths, l, din, h = [7, 3, 1], 7, 5, 4
  x = rng.normal(size=(3, l, din)).astype(np.float32)
  mask = (np.arange(l)[None] < np.array(lengths)[:, None]).astype(np.float32)
  params = BiLSTM(h).init(jax.random.key(0), x, mask)["params"]
  probe = rng.normal(size=(3, l, 2 * h)).astype(np.float32)

  def loss(params, x, implementation):
    return jnp.sum(BiLSTM(h, implementation).apply({"params": params}, x, mask) * probe)

  results = {}
  for implementation in ("scan", "cudnn"):
    out = BiLSTM(h, implementation).apply({"params": params}, x, mask)
    grads = jax.grad(loss, argnums=(0, 1))(params, x, implementation)
    results[implementation] = (out, grads)
  np.testing.assert_allclose(results["cudnn"][0], results["scan"][0], atol=1e-6)
  assert np.all(np.asarray(results["cudnn"][0])[1, 3:] == 0)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, atol=1e-5),
               results["cudnn"][1], results["scan"][1])


def test_cudnn_bilstm_needs_a_gpu_and_names_the_fix(rng):
  if jax.default_backend() == "gpu":
    pytest.skip("this machine has a GPU")
  x = rng.normal(size=(2, 4, 3)).astype(np.float32)
  mask = np.ones((2, 4), np.float32)
  with pytest.raises(ValueError, match="model.lstm='scan'"):
    BiLSTM(4, "cudnn").init(jax.random.key(0), x, mask)
  with pytest.raises(ValueError, match="must be one of"):
    BiLSTM(4, "fused").init(jax.random.key(0), x, mask)


def test_span_predictor_masks_padding(rng):
  x = rng.normal(size=(2, 6, 8)).astype(np.float32)
  mask = np.array([[1] * 6, [1, 1, 1, 1, 0, 0]], np.float32)
  mod = SpanPredictor(ModelConfig(hidden=8, num_heads=1))
  params = mod.init(jax.random.key(0), x, mask)
  start, end = mod.apply(params, x, mask)
  assert np.all(np.asarray(start)[1, 4:] < -1e29) and np.all(np.asarray(end)[1, 4:] < -1e29)
  assert np.all(np.abs(np.asarray(start)[1, :4]) < 1e3)


def brute_count_weights(mask_map):
  b, n, _ = mask_map.shape
  w = np.zeros_like(mask_map)
  for s in range(b):
    for i in range(n):
      for j in range(n):
        count = sum(mask_map[s, a, c] for a in range(i - 1, i + 2) for c in range(j - 1, j + 2)
                    if 0 <= a < n and 0 <= c < n)
        w[s, i, j] = 1.0 / count if count else 0.0
  return w


def test_ranker_matches_numpy_conv_and_count_normalisation(rng):
  b, n, d = 2, 4, 3
  mask_map = np.triu(np.ones((n, n), np.float32))[None].repeat(b, 0)
  mask_map[1, :, 2:] = 0  # second sample: cells 2.. invalid
  np.testing.assert_allclose(np.asarray(valid_count_weights(mask_map)),
                             brute_count_weights(mask_map), rtol=1e-6)
  feats = rng.normal(size=(b, n * n, d)).astype(np.float32)
  mask = mask_map.reshape(b, n * n)
  ranker = Ranker(ModelConfig(hidden=d, num_heads=1))
  params = ranker.init(jax.random.key(0), feats, mask)["params"]
  ours = np.asarray(ranker.apply({"params": params}, feats, mask))
  x = np.pad((feats * mask[..., None]).reshape(b, n, n, d), ((0, 0), (1, 1), (1, 1), (0, 0)))
  kernel = np.asarray(params["conv"]["kernel"], np.float64)  # (3, 3, in, out)
  y = np.zeros((b, n, n, d))
  for i in range(n):
    for j in range(n):
      y[:, i, j] = np.einsum("bxyc,xyco->bo", x[:, i:i + 3, j:j + 3], kernel)
  y = np.maximum(y + np.asarray(params["conv"]["bias"]), 0) * brute_count_weights(mask_map)[..., None]
  logits = y @ np.asarray(params["score"]["kernel"])[0, 0] + np.asarray(params["score"]["bias"])
  expected = (1 / (1 + np.exp(-logits[..., 0]))) * mask_map
  np.testing.assert_allclose(ours, expected.reshape(b, n * n), atol=1e-6)
  assert np.all(ours[mask == 0] == 0)


def test_span_predictors_together_equal_each_alone(rng, monkeypatch):
  # predict_spans advances both predictors' BiLSTMs in the same recurrences (TEA's video and
  # paragraph predictors) off the CPU; each must get what it gets alone.
  monkeypatch.setattr(jax, "default_backend", lambda: "gpu")
  c = ModelConfig(hidden=8, num_heads=1)
  mask = np.array([[1] * 6, [1, 1, 1, 0, 0, 0]], np.float32)
  xs = [rng.normal(size=(2, 6, 8)).astype(np.float32) for _ in range(2)]
  params = [SpanPredictor(c).init(jax.random.key(n), xs[n], mask) for n in range(2)]

  class Pair(nn.Module):
    @nn.compact
    def __call__(self, xs, mask):
      return predict_spans([SpanPredictor(c, name=f"p{n}") for n in range(2)], xs, mask)

  together = Pair().apply({"params": {f"p{n}": params[n]["params"] for n in range(2)}}, xs, mask)
  for n in range(2):
    alone = SpanPredictor(c).apply(params[n], xs[n], mask)
    for ours, ref in zip(together[n], alone):
      np.testing.assert_allclose(ours, ref, rtol=1e-6, atol=1e-6)


@pytest.fixture(scope="module")
def tea_model():
  from conftest import random_batch, tiny_model_config
  from tea_jax import inference
  config = tiny_model_config(merge="concat", paragraph_branch=True)
  params = inference.init_variables(config, jax.random.key(0))
  batch = random_batch(np.random.default_rng(1), config, lengths=[10, 4], words=[3, 5])
  return ModelConfig.from_config(config), params, batch


def test_batched_frame_branches_equal_separate_branches(tea_model):
  # The GPU layout (video and paragraph branches vmapped over stacked parameters) against the
  # CPU one, in evaluation (no dropout): same outputs, and the same gradients.
  config, params, batch = tea_model
  keys = ("start_logits", "end_logits", "paragraph_start_logits", "highlight", "proposal_scores")

  def run(batched):
    model = TEA(config, batch_branches=batched)
    out = jax.jit(model.apply)(params, batch)  # compiled: eager dispatch of every op is slower
    grad = jax.jit(jax.grad(lambda p: model.apply({"params": p, "frozen": params["frozen"]},
                                                  batch)["start_prob"][:, 2].sum()))(
                                                      params["params"])
    return [np.asarray(out[k]) for k in keys], grad

  (out_b, grad_b), (out_s, grad_s) = run(True), run(False)
  for ours, ref in zip(out_b, out_s):
    np.testing.assert_allclose(ours, ref, rtol=1e-5, atol=1e-6)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6), grad_b, grad_s)


def test_batched_frame_branches_draw_their_own_dropout(tea_model):
  config, params, batch = tea_model
  model = TEA(config, batch_branches=True)
  run = lambda seed: model.apply(params, batch, train=True,
                                rngs={"dropout": jax.random.key(seed)})
  a, again, other = run(1), run(1), run(2)
  np.testing.assert_array_equal(a["start_logits"], again["start_logits"])
  assert np.abs(np.asarray(a["start_logits"]) - np.asarray(other["start_logits"])).max() > 1e-4
  # Both branches received dropout.
  clean = model.apply(params, batch)
  assert np.abs(np.asarray(a["paragraph_start_logits"] - clean["paragraph_start_logits"])).max() > 0
  assert np.abs(np.asarray(a["start_logits"] - clean["start_logits"])).max() > 0


def test_tea_with_the_pallas_lstm_equals_the_scan(tea_model, monkeypatch):
  # model.lstm="pallas" (interpreted here) through the whole model.
  config, params, batch = tea_model
  scan = TEA(config).apply(params, batch)
  pallas = TEA(dataclasses.replace(config, lstm="pallas")).apply(params, batch)
  for key in ("start_logits", "end_logits", "paragraph_start_logits", "paragraph_end_logits"):
    valid = batch["video_mask"] > 0
    np.testing.assert_allclose(np.asarray(pallas[key])[valid], np.asarray(scan[key])[valid],
                               rtol=1e-5, atol=1e-5)
