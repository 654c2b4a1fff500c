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
as per parameter, so the CPU's numbers are unchanged to the bit. The optimiser state of
checkpoints written before this layout does not load into it (`flat_state_from_tree` converts
one).
"""

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax


class FlatLayout(NamedTuple):
  """Where each parameter sits in the optimiser's flat vectors (pytree order)."""

  offsets: tuple[int, ...]  # start of each leaf in the flat vector
  shapes: tuple[tuple[int, ...], ...]
  decayed: tuple[bool, ...]  # whether each leaf is weight-decayed
  size: int
  treedef: Any


def flat_layout(params, decay_mask) -> FlatLayout:
  """The flat layout of a parameter pytree under a decay mask (a pytree of bools or a function of
  the parameters returning one)."""
  leaves, treedef = jax.tree_util.tree_flatten(params)
  mask = decay_mask(params) if callable(decay_mask) else decay_mask
  sizes = [int(np.prod(leaf.shape)) for leaf in leaves]
  offsets = np.concatenate([[0], np.cumsum(sizes)]).astype(int).tolist()
  return FlatLayout(tuple(offsets[:-1]), tuple(tuple(leaf.shape) for leaf in leaves),
                    tuple(bool(d) for d in jax.tree_util.tree_leaves(mask)), int(offsets[-1]),
                    treedef)


def ravel(layout: FlatLayout, tree) -> jax.Array:
  """The (P,) flat vector of a pytree shaped like the parameters."""
  return jnp.concatenate([jnp.ravel(leaf) for leaf in jax.tree_util.tree_leaves(tree)])


def leaf_slices(layout: FlatLayout, flat: jax.Array) -> list[jax.Array]:
  """The pieces of a flat vector, one per parameter, shaped like it."""
  return [flat[start:start + int(np.prod(shape))].reshape(shape)
          for start, shape in zip(layout.offsets, layout.shapes)]


class ClippedAdamWState(NamedTuple):
  count: jax.Array  # updates applied so far
  mu: jax.Array  # (P,) first moments, in the flat layout
  nu: jax.Array  # (P,) second moments
  grad_norm: jax.Array  # global L2 norm of the last gradients, before clipping


def global_norm(grads, flat_grads: jax.Array) -> jax.Array:
  """||g|| over all parameters. One reduction over the flat vector on accelerators, where a
  reduction per parameter is a kernel launch each; on the CPU the per-parameter sums of
  optax.tree.norm, whose rounding the CPU runs have always had."""
  if jax.default_backend() == "cpu":
    return optax.tree.norm(grads)
  return jnp.sqrt(jnp.sum(flat_grads * flat_grads))


def clipped_adamw(learning_rate: optax.Schedule, b1: float, b2: float, eps: float,
                  weight_decay: float, max_norm: float, decay_mask) -> optax.GradientTransformation:
  """torch's clip_grad_norm_ then transformers-4.11's AdamW as one optax transformation whose
  moments are (P,) vectors over all parameters (`flat_layout`).

  The moments are updated as two flat vectors (one kernel, not one per parameter); each
  parameter's step then reads its slice of them, a small single-output computation that XLA's GPU
  backend fuses horizontally with the others (dozens of parameters per kernel) and the CPU runs
  per parameter in parallel, without a flat copy of the parameters. Updates come back as a pytree,
  p_new - p.
  """

  def init(params):
    size = flat_layout(params, decay_mask).size
    return ClippedAdamWState(jnp.zeros([], jnp.int32), jnp.zeros([size], jnp.float32),
                             jnp.zeros([size], jnp.float32), jnp.zeros([], jnp.float32))

  def update(grads, state, params):
    layout = flat_layout(params, decay_mask)
    g = ravel(layout, grads)
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

    updates = [step(p, m, v, d) for p, m, v, d in zip(
        jax.tree_util.tree_leaves(params), leaf_slices(layout, mu), leaf_slices(layout, nu),
        layout.decayed)]
    return (jax.tree_util.tree_unflatten(layout.treedef, updates),
            ClippedAdamWState(count, mu, nu, norm))

  return optax.GradientTransformation(init, update)


def flat_state_from_tree(count, mu, nu, params) -> ClippedAdamWState:
  """The flat state equal to a per-parameter AdamW state (step count, moment pytrees shaped like
  params), e.g. the HFAdamWState of checkpoints written before the flat layout."""
  layout = flat_layout(params, decay_mask)
  return ClippedAdamWState(jnp.asarray(count, jnp.int32), ravel(layout, mu), ravel(layout, nu),
                           jnp.zeros([], jnp.float32))


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
