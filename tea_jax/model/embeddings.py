"""Input embeddings: word table, projections, positional table and the video-narrative merge.

docs/design.md sections 1-2. Frozen tables (GloVe rows, the positional table) live in the `frozen` variable
collection: they are part of a checkpoint but never of the optimised parameters.
"""

import math

import flax.linen as nn
import jax.numpy as jnp
import numpy as np

from tea_jax.model.layers import Dropout, CrossAttentionBlock, Dense, uniform_init, xavier_bound

FROZEN = "frozen"


def positional_table(positions: int, dim: int) -> np.ndarray:
  """pe[p, 2i] = sin(p * exp(-2i ln(10000) / dim)), pe[p, 2i+1] = cos(same); float32."""
  position = np.arange(positions, dtype=np.float32)[:, None]
  div = np.exp(np.arange(0, dim, 2, dtype=np.float32) * -(math.log(10000.0) / dim))
  table = np.zeros((positions, dim), np.float32)
  table[:, 0::2] = np.sin(position * div)
  table[:, 1::2] = np.cos(position * div)
  return table


class PositionalTable(nn.Module):
  """The fixed (max_positions, D) table; an imported checkpoint overwrites it with its own."""

  positions: int
  dim: int

  @nn.compact
  def __call__(self, length: int):
    table = self.variable(FROZEN, "table",
                          lambda: jnp.asarray(positional_table(self.positions, self.dim)))
    if length > self.positions:
      raise ValueError(f"sequence length {length} exceeds the positional table "
                       f"({self.positions} rows, config.model.max_positions)")
    return table.value[:length]


class WordEmbedding(nn.Module):
  """Table [PAD zeros; UNK trainable; GloVe rows frozen] -> Dropout -> Linear(word_dim -> D)."""

  vocab_size: int
  word_dim: int
  hidden: int
  dropout: float

  @nn.compact
  def __call__(self, word_ids, *, train: bool):
    unk = self.param("unk", uniform_init(xavier_bound(self.word_dim, 1)), (1, self.word_dim))
    vectors = self.variable(FROZEN, "word_vectors", jnp.zeros,
                            (max(self.vocab_size - 2, 0), self.word_dim))
    table = jnp.concatenate([jnp.zeros_like(unk), unk, vectors.value], axis=0)
    embedded = jnp.take(table, word_ids, axis=0)  # (B, W, word_dim)
    embedded = Dropout(self.dropout, deterministic=not train)(embedded)
    return Dense(self.hidden, "linear")(embedded)


class Projection(nn.Module):
  """Dropout -> Linear(in -> D): the video projection and the narrative projection."""

  hidden: int
  dropout: float

  @nn.compact
  def __call__(self, x, *, train: bool):
    return Dense(self.hidden, "linear")(Dropout(self.dropout, deterministic=not train)(x))


class NarrativeMerge(nn.Module):
  """Merges projected video snippets s_k with projected narratives c_k (TEA Eq. 4-5).

  concat: MLP([s || c]) (Linear 2D->D, ReLU, Linear D->D); add: s + c; attention: the video attends
  to the narrative paragraph with an attention layer.
  """

  mode: str
  hidden: int
  num_heads: int
  dropout: float
  eps: float

  @nn.compact
  def __call__(self, video, narrative, mask, *, train: bool):
    if self.mode == "concat":
      merged = Dense(self.hidden, "dense_in")(jnp.concatenate([video, narrative], axis=-1))
      return Dense(self.hidden, "dense_out")(nn.relu(merged))
    if self.mode == "add":
      return video + narrative
    if self.mode == "attention":
      block = CrossAttentionBlock(self.hidden, self.num_heads, self.dropout, self.eps,
                                  name="attention")
      return block(video, narrative, mask, mask, train=train)
    raise ValueError(f"unknown merge {self.mode!r}: expected concat, add or attention")
