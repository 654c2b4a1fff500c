"""Conditioned span predictor: two BiLSTM encoders and MLP heads give start/end logits.

Several predictors over sequences of the same shape and mask (TEA's video and paragraph branches)
run together through `predict_spans`: their start encoders' BiLSTMs form one recurrence, then their
end encoders' (tea_jax/model/bilstm.py), each with its own parameters.
"""

import flax.linen as nn
import jax.numpy as jnp

from tea_jax.model.bilstm import BiLSTM, bilstms
from tea_jax.model.config import ModelConfig
from tea_jax.model.layers import Dense, mask_logits


class LSTMEncoder(nn.Module):
  """BiLSTM followed by a Linear(2H -> D) (EMB's `start_encoder` / `end_encoder`)."""

  config: ModelConfig

  def setup(self):
    self.rnn = BiLSTM(self.config.hidden, self.config.lstm)
    self.dense_output = Dense(self.config.hidden, "dense_output")

  def __call__(self, x, mask):
    return encode([self], [x], mask)[0]


def encode(encoders, inputs, mask):
  """LSTMEncoder outputs (B, L, D) of several encoders over their inputs (B, L, Din), one BiLSTM
  recurrence for all."""
  weights = [e.rnn.weights(x.shape[-1]) for e, x in zip(encoders, inputs)]
  outputs = bilstms(weights, inputs, mask, encoders[0].config.lstm)
  return [e.dense_output(y) for e, y in zip(encoders, outputs)]


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

  def setup(self):
    c = self.config
    self.start_encoder = LSTMEncoder(c)
    self.end_encoder = LSTMEncoder(c)
    self.start_head = SpanHead(c)
    self.end_head = SpanHead(c)

  def __call__(self, x, mask):
    return predict_spans([self], [x], mask)[0]


def predict_spans(predictors, inputs, mask):
  """(start logits, end logits) of each SpanPredictor over its input (B, L, D); all inputs share
  the mask (B, L)."""
  start_features = encode([p.start_encoder for p in predictors], inputs, mask)
  end_features = encode([p.end_encoder for p in predictors], start_features, mask)
  return [(mask_logits(p.start_head(s, x), mask), mask_logits(p.end_head(e, x), mask))
          for p, x, s, e in zip(predictors, inputs, start_features, end_features)]
