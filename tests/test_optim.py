"""The optimiser against a numpy transcription of EMB's update rule (docs/design.md section 0)."""

import jax
import ml_collections
import numpy as np
import optax
from conftest import tiny_model_config

from tea_jax import inference, optim


def config(lr=5e-4):
  c = ml_collections.ConfigDict()
  c.optimizer = dict(learning_rate=lr, weight_decay=0.01, b1=0.9, b2=0.999, eps=1e-6,
                     clip_norm=1.0)
  return c


def numpy_steps(params, grads_seq, decay, lr, total):
  """transformers-4.11 AdamW after torch's clip_grad_norm_, float64."""
  p = {k: v.astype(np.float64) for k, v in params.items()}
  m = {k: np.zeros_like(v) for k, v in p.items()}
  v = {k: np.zeros_like(x) for k, x in p.items()}
  for k_step, grads in enumerate(grads_seq):
    norm = np.sqrt(sum(np.sum(g.astype(np.float64) ** 2) for g in grads.values()))
    scale = min(1.0, 1.0 / (norm + 1e-6))
    lr_k = lr * (total - k_step) / total
    t = k_step + 1
    for name in p:
      g = grads[name] * scale
      m[name] = 0.9 * m[name] + 0.1 * g
      v[name] = 0.999 * v[name] + 0.001 * g * g
      step_size = lr_k * np.sqrt(1 - 0.999 ** t) / (1 - 0.9 ** t)
      p[name] = p[name] - step_size * m[name] / (np.sqrt(v[name]) + 1e-6)
      if decay[name]:
        p[name] = p[name] - lr_k * 0.01 * p[name]
  return p


def test_updates_match_numpy_transcription(rng):
  params = {"kernel": rng.normal(size=(3, 4)).astype(np.float32),
            "bias": rng.normal(size=(4,)).astype(np.float32)}
  # Step 0 is clipped (large gradient), later steps are not.
  grads_seq = [{k: (rng.normal(size=v.shape) * s).astype(np.float32) for k, v in params.items()}
               for s in (3.0, 0.05, 0.1)]
  total = 4
  tx = optim.make_optimizer(config(), total)
  state = tx.init(params)
  p = params
  for grads in grads_seq:
    updates, state = tx.update(grads, state, p)
    p = jax.tree_util.tree_map(lambda a, b: a + b, p, updates)
  expected = numpy_steps(params, grads_seq, {"kernel": True, "bias": False}, 5e-4, total)
  for name in params:
    np.testing.assert_allclose(np.asarray(p[name]), expected[name], rtol=1e-6, atol=1e-7)


def test_weight_decay_groups_follow_emb_names():
  c = tiny_model_config(merge="concat", paragraph_branch=True)
  mask = optim.decay_mask(inference.init_variables(c, jax.random.key(0))["params"])
  flat = {jax.tree_util.keystr(k): v for k, v in jax.tree_util.tree_leaves_with_path(mask)}

  def get(*path):
    return flat["".join(f"['{p}']" for p in path)]

  assert get("video_encoder", "f2f", "guided", "layer", "norm1", "scale")  # attention LayerNorm
  assert not get("video_encoder", "f2f", "guided", "guide", "layer_norm", "scale")  # DSConv LN
  assert get("video_encoder", "f2f", "guided", "guide", "depthwise")
  assert get("predictor", "start_encoder", "rnn", "forward_w_hh")
  assert not get("predictor", "start_encoder", "rnn", "forward_b_ih")
  assert get("word_embedding", "unk") and get("frame_fusion", "w_m") and get("frame_fusion",
                                                                              "w_pool")
  assert not get("ranker", "conv", "bias") and get("ranker", "conv", "kernel")
  assert get("merge", "dense_in", "kernel") and not get("merge", "dense_in", "bias")
  # Every bias is excluded, nothing else is.
  for name, decayed in flat.items():
    is_bias = name.endswith("['bias']") or "_b_i" in name or "_b_h" in name
    assert decayed != (is_bias or "layer_norm" in name), name


def test_learning_rate_decays_linearly_to_zero():
  schedule = optim.learning_rate_schedule(config(), 10)
  np.testing.assert_allclose([float(schedule(k)) for k in (0, 5, 9, 10)],
                             [5e-4, 2.5e-4, 5e-5, 0.0], rtol=1e-6)


def test_moments_are_flat_vectors_in_pytree_order(rng):
  params = {"a": {"bias": rng.normal(size=(3,)).astype(np.float32),
                  "kernel": rng.normal(size=(2, 3)).astype(np.float32)},
            "b": {"kernel": rng.normal(size=(4,)).astype(np.float32)}}
  grads = jax.tree_util.tree_map(lambda x: 1e-3 * x, params)  # norm < 1: not clipped
  tx = optim.clipped_adamw(optax.constant_schedule(1e-3), 0.9, 0.999, 1e-6, 0.01, 1.0,
                           optim.decay_mask)
  state = tx.init(params)
  assert state.mu.shape == (13,)
  _, state = tx.update(grads, state, params)
  # First moments after one update: (1 - b1) g, leaves in pytree order (a/bias, a/kernel, b).
  expected = 0.1 * np.concatenate([grads["a"]["bias"], grads["a"]["kernel"].ravel(),
                                   grads["b"]["kernel"]])
  np.testing.assert_allclose(np.asarray(state.mu), expected, rtol=1e-6)


def test_state_keeps_the_unclipped_gradient_norm(rng):
  params = {"kernel": rng.normal(size=(3, 4)).astype(np.float32),
            "bias": rng.normal(size=(4,)).astype(np.float32)}
  grads = {k: (rng.normal(size=v.shape) * 3).astype(np.float32) for k, v in params.items()}
  tx = optim.make_optimizer(config(), 4)
  _, state = tx.update(grads, tx.init(params), params)
  expected = np.sqrt(sum(np.sum(g.astype(np.float64) ** 2) for g in grads.values()))
  np.testing.assert_allclose(float(optim.last_grad_norm(state)), expected, rtol=1e-6)
  assert state.mu.shape == state.nu.shape == (16,)


def test_accelerator_path_reduces_the_flat_vector_once(rng, monkeypatch):
  # Off the CPU the norm is one reduction over the flat gradients (other rounding, same value).
  monkeypatch.setattr(jax, "default_backend", lambda: "gpu")
  params = {"kernel": rng.normal(size=(3, 4)).astype(np.float32),
            "bias": rng.normal(size=(4,)).astype(np.float32)}
  grads_seq = [{k: (rng.normal(size=v.shape) * s).astype(np.float32) for k, v in params.items()}
               for s in (3.0, 0.05)]
  tx = optim.make_optimizer(config(), 4)
  state, p = tx.init(params), params
  jaxpr = jax.make_jaxpr(lambda g, s, p: tx.update(g, s, p))(grads_seq[0], state, params)
  assert sum(e.primitive.name == "reduce_sum" for e in jaxpr.eqns) == 1
  for grads in grads_seq:
    updates, state = tx.update(grads, state, p)
    p = jax.tree_util.tree_map(lambda a, b: a + b, p, updates)
  expected = numpy_steps(params, grads_seq, {"kernel": True, "bias": False}, 5e-4, 4)
  for name in params:
    np.testing.assert_allclose(np.asarray(p[name]), expected[name], rtol=1e-6, atol=1e-7)
