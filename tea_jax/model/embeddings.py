"""Input embeddings: word table, projections, positional table and the video-narrative merge.

docs/design.md sections 1-2. Frozen tables (GloVe rows, the positional table) live in the `frozen`
variable collection: they are part of a checkpoint but never of the optimised parameters.
"""

import math

import flax.linen as nn
import jax.numpy as jnp
import numpy as np

from tea_jax.model.config import ModelConfig
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

  config: ModelConfig

  @nn.compact
  def __call__(self, length: int):
    rows = self.config.max_positions
    table = self.variable(FROZEN, "table",
                          lambda: jnp.asarray(positional_table(rows, self.config.hidden)))
    if length > rows:
      raise ValueError(f"sequence length {length} exceeds the positional table "
                       f"({rows} rows, config.model.max_positions)")
    return table.value[:length]


class WordEmbedding(nn.Module):
  """Table [PAD zeros; UNK trainable; GloVe rows frozen] -> Dropout -> Linear(word_dim -> D)."""

  config: ModelConfig

  @nn.compact
  def __call__(self, word_ids, *, train: bool):
    c = self.config
    unk = self.param("unk", uniform_init(xavier_bound(c.word_dim, 1)), (1, c.word_dim))
    vectors = self.variable(FROZEN, "word_vectors", jnp.zeros,
                            (max(c.vocab_size - 2, 0), c.word_dim))
    table = jnp.concatenate([jnp.zeros_like(unk), unk, vectors.value], axis=0)
    embedded = jnp.take(table, word_ids, axis=0)  # (B, W, word_dim)
    embedded = Dropout(c.dropout, deterministic=not train)(embedded)
    return Dense(c.hidden, "linear")(embedded)


class Projection(nn.Module):
  """Dropout -> Linear(in -> D): the video projection and the narrative projection."""

  config: ModelConfig

  @nn.compact
  def __call__(self, x, *, train: bool):
    c = self.config
    return Dense(c.hidden, "linear")(Dropout(c.dropout, deterministic=not train)(x))


class NarrativeMerge(nn.Module):
  """Merges projected video snippets s_k with projected narratives c_k (TEA Eq. 4-5).

  concat: MLP([s || c]) (Linear 2D->D, ReLU, Linear D->D); add: s + c; attention: the video attends
  to the narrative paragraph with an attention layer.
  """

  config: ModelConfig

  @nn.compact
  def __call__(self, video, narrative, mask, *, train: bool):
    c = self.config
    if c.merge == "concat":
      merged = Dense(c.hidden, "dense_in")(jnp.concatenate([video, narrative], axis=-1))
      return Dense(c.hidden, "dense_out")(nn.relu(merged))
    if c.merge == "add":
      return video + narrative
    if c.merge == "attention":
      return CrossAttentionBlock(c, name="attention")(video, narrative, mask, mask, train=train)
    raise ValueError(f"no merge to apply (config.model.merge={c.merge!r})")
