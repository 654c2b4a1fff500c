"""Conditioned span predictor: two BiLSTM encoders and MLP heads give start/end logits."""

import flax.linen as nn
import jax.numpy as jnp

from tea_jax.model.bilstm import BiLSTM
from tea_jax.model.config import ModelConfig
from tea_jax.model.layers import Dense, mask_logits


class LSTMEncoder(nn.Module):
  """BiLSTM followed by a Linear(2H -> D) (EMB's `start_encoder` / `end_encoder`)."""

  config: ModelConfig

  @nn.compact
  def __call__(self, x, mask):
    bilstm = BiLSTM(self.config.hidden, self.config.lstm, name="rnn")
    return Dense(self.config.hidden, "dense_output")(bilstm(x, mask))


class SpanHead(nn.Module):
  """Linear(2D -> D) - ReLU - Linear(D -> 1) on [features, x]."""

  config: ModelConfig

  @nn.compact
  def __call__(self, features, x):
    y = nn.relu(Dense(self.config.hidden, "dense_in")(jnp.concatenate([features, x], axis=-1)))
    return Dense(1, "dense_out")(y)[..., 0]


class SpanPredictor(nn.Module):
  """Start/end logits (B, L), -1e30 on padding: hs = Enc_s(x), he = Enc_e(hs)."""

  config: ModelConfig

  @nn.compact
  def __call__(self, x, mask):
    c = self.config
    start_features = LSTMEncoder(c, name="start_encoder")(x, mask)
    end_features = LSTMEncoder(c, name="end_encoder")(start_features, mask)
    start = SpanHead(c, name="start_head")(start_features, x)
    end = SpanHead(c, name="end_head")(end_features, x)
    return mask_logits(start, mask), mask_logits(end, mask)
