"""The proposal ranker of EMB (docs/design.md section 8): a 3x3 conv over the N x N map, normalised
by the number of valid cells in each window, then a 1x1 conv and a sigmoid (exactly 0 on invalid
cells)."""

import flax.linen as nn
import jax
import jax.numpy as jnp

from tea_jax.model.config import ModelConfig
from tea_jax.model.layers import mask_logits, xavier_uniform


def valid_count_weights(mask_map: jax.Array) -> jax.Array:
  """1 / (valid cells in the 3x3 window around each cell, itself included); 0 where none.

  mask_map (B, N, N) -> (B, N, N).
  """
  padded = jnp.pad(mask_map, ((0, 0), (1, 1), (1, 1)))
  n = mask_map.shape[1]
  count = sum(padded[:, di:di + n, dj:dj + n] for di in range(3) for dj in range(3))
  return jnp.where(count > 0, 1.0 / jnp.maximum(count, 1.0), 0.0)


class Ranker(nn.Module):
  """Scores every proposal in [0, 1]."""

  config: ModelConfig

  @nn.compact
  def __call__(self, features, mask):
    # features (B, N*N, D), mask (B, N*N).
    b, p, d = features.shape
    n = int(round(p ** 0.5))
    mask_map = mask.reshape(b, n, n)
    x = (features * mask[..., None]).reshape(b, n, n, d)
    conv = nn.Conv(self.config.hidden, (3, 3), padding=((1, 1), (1, 1)), kernel_init=xavier_uniform,
                   bias_init=nn.initializers.zeros, name="conv")
    y = nn.relu(conv(x)) * valid_count_weights(mask_map)[..., None]
    logits = nn.Conv(1, (1, 1), kernel_init=xavier_uniform, bias_init=nn.initializers.zeros,
                     name="score")(y)[..., 0]
    return jax.nn.sigmoid(mask_logits(logits, mask_map)).reshape(b, p)
