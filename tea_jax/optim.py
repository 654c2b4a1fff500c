"""The optimiser of docs/design.md section 0, from optax pieces, reproducing EMB's exact arithmetic.

EMB used transformers-4.11's AdamW after torch's clip_grad_norm_:
  g *= min(1, max_norm / (||g||_global + 1e-6))
  m = b1 m + (1 - b1) g;  v = b2 v + (1 - b2) g^2
  p -= lr_k * sqrt(1 - b2^t) / (1 - b1^t) * m / (sqrt(v) + eps)   (eps on the UNcorrected sqrt(v))
  p -= lr_k * wd * p                                                (decoupled, on the updated p)
with lr_k = lr * (N - k) / N for update k = 0..N-1. optax.adamw differs in all three details
(eps after bias correction, decay on the pre-update p, clip_by_global_norm without the 1e-6).

Clipping and AdamW run as one transformation whose moments are stored as flat vectors over all
parameters (`clipped_adamw`): a few kernels per step instead of several per parameter (382 of them
in TEA), which on a GPU were hundreds of launches. Element for element it is the same arithmetic
as per parameter, so the CPU gets the numbers of a per-parameter AdamW to the bit.
"""

from typing import NamedTuple

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from jax.flatten_util import ravel_pytree


class ClippedAdamWState(NamedTuple):
  count: jax.Array  # updates applied so far
  mu: jax.Array  # (P,) first moments, in the flat layout
  nu: jax.Array  # (P,) second moments
  grad_norm: jax.Array  # global L2 norm of the last gradients, before clipping


def global_norm(grads, flat_grads: jax.Array) -> jax.Array:
  """||g|| over all parameters. One reduction over the flat vector on accelerators, where a
  reduction per parameter is a kernel launch each; on the CPU the per-parameter sums of
  optax.tree.norm, so that its rounding is a per-parameter optimizer's, bit for bit."""
  if jax.default_backend() == "cpu":
    return optax.tree.norm(grads)
  return jnp.sqrt(jnp.sum(flat_grads * flat_grads))


def clipped_adamw(learning_rate: optax.Schedule, b1: float, b2: float, eps: float,
                  weight_decay: float, max_norm: float, decay_mask) -> optax.GradientTransformation:
  """torch's clip_grad_norm_ then transformers-4.11's AdamW as one optax transformation whose
  moments are (P,) vectors over all parameters, in pytree order (`ravel_pytree`'s).

  The moments are updated as two flat vectors (one kernel, not one per parameter); each
  parameter's step then reads its slice of them, a small single-output computation that XLA's GPU
  backend fuses horizontally with the others (dozens of parameters per kernel) and the CPU runs
  per parameter in parallel, without a flat copy of the parameters. `decay_mask(params)` says
  which parameters are decayed. Updates come back as a pytree, p_new - p.
  """

  def init(params):
    size = sum(int(np.prod(np.shape(leaf))) for leaf in jax.tree_util.tree_leaves(params))
    return ClippedAdamWState(jnp.zeros([], jnp.int32), jnp.zeros([size], jnp.float32),
                             jnp.zeros([size], jnp.float32), jnp.zeros([], jnp.float32))

  def update(grads, state, params):
    g, _ = ravel_pytree(grads)
    norm = global_norm(grads, g)
    g = g * jnp.minimum(1.0, max_norm / (norm + 1e-6))
    count = state.count + 1
    mu = b1 * state.mu + (1.0 - b1) * g
    nu = b2 * state.nu + (1.0 - b2) * g * g
    t = count.astype(jnp.float32)
    lr = learning_rate(state.count)
    step_size = lr * jnp.sqrt(1.0 - b2 ** t) / (1.0 - b1 ** t)

    def step(p, m, v, decayed):
      p_new = p - step_size * m / (jnp.sqrt(v) + eps)
      if decayed:
        p_new = p_new - lr * weight_decay * p_new
      return p_new - p

    _, unravel = ravel_pytree(params)  # flat vector -> pytree of the parameters' shapes
    updates = jax.tree_util.tree_map(step, params, unravel(mu), unravel(nu), decay_mask(params))
    return updates, ClippedAdamWState(count, mu, nu, norm)

  return optax.GradientTransformation(init, update)


def last_grad_norm(opt_state) -> jax.Array:
  """The global gradient norm (before clipping) of the update that produced `opt_state`."""
  return opt_state.grad_norm


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
  return clipped_adamw(learning_rate_schedule(config, total_steps), o.b1, o.b2, o.eps,
                       o.weight_decay, o.clip_norm, decay_mask)
