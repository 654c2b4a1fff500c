"""Basic building blocks: dense layers with EMB's init, masked multi-head attention, the
attention layer.

docs/design.md section 3. Every dense layer of EMB is a Conv1d of kernel 1 with Xavier-uniform
weights and zero bias; LayerNorms use eps 1e-6. Masking is additive with -1e30 (never -inf), so a
query row whose keys are all masked attends uniformly to every key, padded ones included, exactly as
the reference.
"""

import math
from typing import Callable

import flax.linen as nn
import jax
import jax.numpy as jnp

from tea_jax.model.config import ModelConfig

# Added to masked logits. Finite on purpose: fully masked rows become uniform, not NaN.
MASK_VALUE = -1e30

xavier_uniform = nn.initializers.xavier_uniform()


def uniform_init(bound: float) -> Callable:
  """Initialiser drawing from U(-bound, bound) (PyTorch's LSTM init, custom fans)."""

  def init(key, shape, dtype=jnp.float32):
    return jax.random.uniform(key, shape, dtype, -bound, bound)

  return init


def xavier_bound(fan_in: int, fan_out: int) -> float:
  """Xavier-uniform bound sqrt(6 / (fan_in + fan_out))."""
  return math.sqrt(6.0 / (fan_in + fan_out))


def mask_logits(logits: jax.Array, mask: jax.Array) -> jax.Array:
  """Adds -1e30 where `mask` is 0 (mask broadcasts against logits)."""
  return logits + (1.0 - mask.astype(logits.dtype)) * MASK_VALUE


class Dropout(nn.Module):
  """Inverted dropout drawing 16 random bits per element instead of 32.

  Dropout masks dominate the training step on CPU (the attention weights alone are millions of
  elements per layer); two masks per 32-bit draw halve that cost. An element is kept with
  probability round(65536 (1 - rate)) / 65536 (|error| < 8e-6) and scaled by the inverse of that
  exact probability, so the expectation is unchanged.
  """

  rate: float
  deterministic: bool

  @nn.compact
  def __call__(self, x):
    if self.deterministic or self.rate == 0.0:
      return x
    threshold = int(round((1.0 - self.rate) * 65536))
    words = jax.random.bits(self.make_rng("dropout"), (-(-x.size // 2),), jnp.uint32)
    halves = jax.lax.bitcast_convert_type(words, jnp.uint16).reshape(-1)[:x.size]
    keep = halves.reshape(x.shape) < threshold
    return jnp.where(keep, x * (65536.0 / threshold), 0.0).astype(x.dtype)


def Dense(features: int, name: str, use_bias: bool = True) -> nn.Dense:
  """A linear layer initialised like EMB's Conv1D (Xavier-uniform weight, zero bias)."""
  return nn.Dense(features, use_bias=use_bias, kernel_init=xavier_uniform,
                  bias_init=nn.initializers.zeros, name=name)


def LayerNorm(eps: float, name: str) -> nn.LayerNorm:
  """LayerNorm over the last axis with EMB's epsilon."""
  return nn.LayerNorm(epsilon=eps, name=name)


class MultiHeadAttention(nn.Module):
  """Masked multi-head attention with no output projection (docs/design.md section 3)."""

  config: ModelConfig

  @nn.compact
  def __call__(self, query, key, value, mask, *, train: bool):
    # query (B, Lq, D), key/value (B, Lk, D), mask (B, 1 or Lq, Lk).
    c = self.config
    head_dim = c.hidden // c.num_heads

    def split(x, name):
      x = Dense(c.hidden, name)(x)
      x = x.reshape(x.shape[:2] + (c.num_heads, head_dim))
      return x.transpose(0, 2, 1, 3)  # (B, H, L, dh)

    # Heads-major layout with plain matmuls: XLA's CPU dot is several times faster this way than
    # with the equivalent einsum over (B, L, H, dh).
    q, k, v = split(query, "query"), split(key, "key"), split(value, "value")
    scores = jnp.matmul(q, k.swapaxes(-1, -2)) / math.sqrt(head_dim)  # (B, H, Lq, Lk)
    scores = mask_logits(scores, mask[:, None])
    weights = jax.nn.softmax(scores, axis=-1)
    weights = Dropout(c.dropout, deterministic=not train)(weights)
    context = jnp.matmul(weights, v).transpose(0, 2, 1, 3)  # (B, Lq, H, dh)
    return context.reshape(context.shape[:2] + (c.hidden,))  # (B, Lq, D)


class FeedForward(nn.Module):
  """Linear-ReLU-Linear (D -> D -> D), EMB's `dense` Sequential."""

  config: ModelConfig

  @nn.compact
  def __call__(self, x):
    d = self.config.hidden
    return Dense(d, "dense_out")(nn.relu(Dense(d, "dense_in")(x)))


class AttentionLayer(nn.Module):
  """Post-norm layer: h = LN(residual + Drop(MHA(q, k, v))); out = LN(h + Drop(FFN(h))).

  `residual` is the attention query for plain layers; guided layers pass the masked target while the
  attention itself reads the guided features.
  """

  config: ModelConfig

  @nn.compact
  def __call__(self, query, key, value, mask, *, train: bool, residual=None):
    c = self.config
    residual = query if residual is None else residual
    drop = Dropout(c.dropout, deterministic=not train)
    context = MultiHeadAttention(c, name="attention")(query, key, value, mask, train=train)
    h = LayerNorm(c.layer_norm_eps, "norm1")(residual + drop(context))
    ffn = FeedForward(c, name="ffn")(h)
    return LayerNorm(c.layer_norm_eps, "norm2")(h + drop(ffn))


def self_mask(mask: jax.Array) -> jax.Array:
  """Key mask for self-attention: (B, L) -> (B, 1, L)."""
  return mask[:, None, :]


def cross_mask(target_mask: jax.Array, source_mask: jax.Array) -> jax.Array:
  """Target x source mask (B, Lt, Ls): padded target rows are fully masked (uniform weights)."""
  return target_mask[:, :, None] * source_mask[:, None, :]


class SelfAttentionBlock(nn.Module):
  """One attention layer with its input as query, key and value (w2w, pq2q, vq2q)."""

  config: ModelConfig

  @nn.compact
  def __call__(self, x, mask, *, train: bool):
    layer = AttentionLayer(self.config, name="layer")
    return layer(x, x, x, self_mask(mask), train=train)


class CrossAttentionBlock(nn.Module):
  """One attention layer where the target attends to the source (w2f, w2p)."""

  config: ModelConfig

  @nn.compact
  def __call__(self, target, source, target_mask, source_mask, *, train: bool):
    layer = AttentionLayer(self.config, name="layer")
    return layer(target, source, source, cross_mask(target_mask, source_mask), train=train)
