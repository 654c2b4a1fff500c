"""Basic building blocks: dense layers with EMB's init, masked multi-head attention, attention layer.

MODEL.md section 3. Every dense layer of EMB is a Conv1d of kernel 1 with Xavier-uniform weights and
zero bias; LayerNorms use eps 1e-6. Masking is additive with -1e30 (never -inf), so a query row whose
keys are all masked attends uniformly to every key, padded ones included, exactly as the reference.
"""

import math
from typing import Callable

import flax.linen as nn
import jax
import jax.numpy as jnp

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


def Dense(features: int, name: str, use_bias: bool = True) -> nn.Dense:
  """A linear layer initialised like EMB's Conv1D (Xavier-uniform weight, zero bias)."""
  return nn.Dense(features, use_bias=use_bias, kernel_init=xavier_uniform,
                  bias_init=nn.initializers.zeros, name=name)


def LayerNorm(eps: float, name: str) -> nn.LayerNorm:
  """LayerNorm over the last axis with EMB's epsilon."""
  return nn.LayerNorm(epsilon=eps, name=name)


class MultiHeadAttention(nn.Module):
  """Masked multi-head attention with no output projection (MODEL.md section 3)."""

  hidden: int
  num_heads: int
  dropout: float

  @nn.compact
  def __call__(self, query, key, value, mask, *, train: bool):
    # query (B, Lq, D), key/value (B, Lk, D), mask (B, 1 or Lq, Lk).
    head_dim = self.hidden // self.num_heads

    def split(x, name):
      x = Dense(self.hidden, name)(x)
      return x.reshape(x.shape[:2] + (self.num_heads, head_dim))  # (B, L, H, dh)

    q, k, v = split(query, "query"), split(key, "key"), split(value, "value")
    scores = jnp.einsum("bqhd,bkhd->bhqk", q, k) / math.sqrt(head_dim)
    scores = mask_logits(scores, mask[:, None])
    weights = jax.nn.softmax(scores, axis=-1)
    weights = nn.Dropout(self.dropout, deterministic=not train)(weights)
    context = jnp.einsum("bhqk,bkhd->bqhd", weights, v)
    return context.reshape(context.shape[:2] + (self.hidden,))  # (B, Lq, D)


class FeedForward(nn.Module):
  """Linear-ReLU-Linear (D -> D -> D), EMB's `dense` Sequential."""

  hidden: int

  @nn.compact
  def __call__(self, x):
    return Dense(self.hidden, "dense_out")(nn.relu(Dense(self.hidden, "dense_in")(x)))


class AttentionLayer(nn.Module):
  """Post-norm layer: h = LN(residual + Drop(MHA(q, k, v))); out = LN(h + Drop(FFN(h))).

  `residual` is the attention query for plain layers; guided layers pass the masked target while the
  attention itself reads the guided features.
  """

  hidden: int
  num_heads: int
  dropout: float
  eps: float

  @nn.compact
  def __call__(self, query, key, value, mask, *, train: bool, residual=None):
    residual = query if residual is None else residual
    drop = nn.Dropout(self.dropout, deterministic=not train)
    context = MultiHeadAttention(self.hidden, self.num_heads, self.dropout, name="attention")(
        query, key, value, mask, train=train)
    h = LayerNorm(self.eps, "norm1")(residual + drop(context))
    ffn = FeedForward(self.hidden, name="ffn")(h)
    return LayerNorm(self.eps, "norm2")(h + drop(ffn))


def self_mask(mask: jax.Array) -> jax.Array:
  """Key mask for self-attention: (B, L) -> (B, 1, L)."""
  return mask[:, None, :]


def cross_mask(target_mask: jax.Array, source_mask: jax.Array) -> jax.Array:
  """Target x source mask (B, Lt, Ls): padded target rows are fully masked (uniform weights)."""
  return target_mask[:, :, None] * source_mask[:, None, :]


class SelfAttentionBlock(nn.Module):
  """One attention layer with its input as query, key and value (w2w, pq2q, vq2q)."""

  hidden: int
  num_heads: int
  dropout: float
  eps: float

  @nn.compact
  def __call__(self, x, mask, *, train: bool):
    layer = AttentionLayer(self.hidden, self.num_heads, self.dropout, self.eps, name="layer")
    return layer(x, x, x, self_mask(mask), train=train)


class CrossAttentionBlock(nn.Module):
  """One attention layer where the target attends to the source (w2f, w2p)."""

  hidden: int
  num_heads: int
  dropout: float
  eps: float

  @nn.compact
  def __call__(self, target, source, target_mask, source_mask, *, train: bool):
    layer = AttentionLayer(self.hidden, self.num_heads, self.dropout, self.eps, name="layer")
    return layer(target, source, source, cross_mask(target_mask, source_mask), train=train)
