"""The optimiser of docs/design.md section 0, from optax pieces, reproducing EMB's exact arithmetic.

EMB used transformers-4.11's AdamW after torch's clip_grad_norm_:
  g *= min(1, max_norm / (||g||_global + 1e-6))
  m = b1 m + (1 - b1) g;  v = b2 v + (1 - b2) g^2
  p -= lr_k * sqrt(1 - b2^t) / (1 - b1^t) * m / (sqrt(v) + eps)   (eps on the UNcorrected sqrt(v))
  p -= lr_k * wd * p                                                (decoupled, on the updated p)
with lr_k = lr * (N - k) / N for update k = 0..N-1. optax.adamw differs in all three details
(eps after bias correction, decay on the pre-update p, clip_by_global_norm without the 1e-6).
"""

from typing import NamedTuple

import jax
import jax.numpy as jnp
import ml_collections
import optax


def torch_clip_by_global_norm(max_norm: float) -> optax.GradientTransformation:
  """g *= min(1, max_norm / (||g|| + 1e-6)) (torch.nn.utils.clip_grad_norm_)."""

  def update(updates, state, params=None):
    del params
    norm = optax.tree.norm(updates)
    scale = jnp.minimum(1.0, max_norm / (norm + 1e-6))
    return jax.tree_util.tree_map(lambda g: g * scale, updates), state

  return optax.GradientTransformation(lambda params: optax.EmptyState(), update)


class HFAdamWState(NamedTuple):
  count: jax.Array
  mu: optax.Updates
  nu: optax.Updates


def hf_adamw(learning_rate: optax.Schedule, b1: float, b2: float, eps: float,
             weight_decay: float, decay_mask) -> optax.GradientTransformation:
  """transformers-4.11 AdamW as one optax transformation: returns p_new - p."""

  def init(params):
    zeros = jax.tree_util.tree_map(jnp.zeros_like, params)
    return HFAdamWState(jnp.zeros([], jnp.int32), zeros, jax.tree_util.tree_map(jnp.zeros_like,
                                                                                 params))

  def update(grads, state, params):
    count = state.count + 1
    mu = jax.tree_util.tree_map(lambda m, g: b1 * m + (1.0 - b1) * g, state.mu, grads)
    nu = jax.tree_util.tree_map(lambda v, g: b2 * v + (1.0 - b2) * g * g, state.nu, grads)
    t = count.astype(jnp.float32)
    lr = learning_rate(state.count)
    step_size = lr * jnp.sqrt(1.0 - b2 ** t) / (1.0 - b1 ** t)
    mask = decay_mask(params) if callable(decay_mask) else decay_mask

    def new_param(p, m, v, decay):
      p_new = p - step_size * m / (jnp.sqrt(v) + eps)
      if decay:
        p_new = p_new - lr * weight_decay * p_new
      return p_new - p

    updates = jax.tree_util.tree_map(new_param, params, mu, nu, mask)
    return updates, HFAdamWState(count, mu, nu)

  return optax.GradientTransformation(init, update)


def decays(path: tuple[str, ...]) -> bool:
  """EMB's weight-decay groups: decay every weight (linear, conv, LSTM, CQA vectors, pooling vector,
  UNK, attention-layer LayerNorm scales); no decay on biases and on the guide's LayerNorm scale
  (EMB matched parameter names against 'bias' and 'layer_norm')."""
  name = path[-1]
  if name == "bias" or name.endswith(("b_ih", "b_hh")):
    return False
  return "layer_norm" not in path


def decay_mask(params):
  """Pytree of bools: which parameters are decayed."""
  return jax.tree_util.tree_map_with_path(
      lambda path, _: decays(tuple(str(getattr(k, "key", k)) for k in path)), params)


def learning_rate_schedule(config: ml_collections.ConfigDict, total_steps: int) -> optax.Schedule:
  """lr * (N - k) / N for update k."""
  return optax.linear_schedule(config.optimizer.learning_rate, 0.0, total_steps)


def make_optimizer(config: ml_collections.ConfigDict, total_steps: int
                   ) -> optax.GradientTransformation:
  """Clipping then AdamW, over the trainable `params` collection only (frozen rows never move)."""
  o = config.optimizer
  return optax.chain(
      torch_clip_by_global_norm(o.clip_norm),
      hf_adamw(learning_rate_schedule(config, total_steps), o.b1, o.b2, o.eps, o.weight_decay,
               decay_mask))
