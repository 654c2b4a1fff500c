"""Conditioned span predictor: two BiLSTM encoders that respect each sample's length, and MLP heads.

MODEL.md section 8. PyTorch LSTM conventions (gate order i, f, g, o; two biases; weights and biases
U(-1/sqrt(H), 1/sqrt(H))) so EMB checkpoints import unchanged.
"""

import math

import flax.linen as nn
import jax
import jax.numpy as jnp

from tea_jax.layers import Dense, mask_logits, uniform_init


class BiLSTM(nn.Module):
  """Bidirectional single-layer LSTM over the valid prefix of each sample, zero on padding.

  The forward direction runs t = 0..v_len-1 and the backward one t = v_len-1..0, both from a zero
  state, like PyTorch's packed sequences. Both directions advance in one scan.
  """

  hidden: int

  @nn.compact
  def __call__(self, x, mask):
    # x (B, L, Din), mask (B, L) with the valid frames first.
    h = self.hidden
    init = uniform_init(1.0 / math.sqrt(h))
    din = x.shape[-1]
    params = {}
    for direction in ("forward", "backward"):
      params[direction] = dict(
          w_ih=self.param(f"{direction}_w_ih", init, (din, 4 * h)),
          w_hh=self.param(f"{direction}_w_hh", init, (h, 4 * h)),
          b_ih=self.param(f"{direction}_b_ih", init, (4 * h,)),
          b_hh=self.param(f"{direction}_b_hh", init, (4 * h,)))
    # Input projections for all steps at once; the scan only carries the recurrent matmul.
    gates_in = {d: x @ p["w_ih"] + p["b_ih"] + p["b_hh"] for d, p in params.items()}
    time_major = lambda a: jnp.swapaxes(a, 0, 1)
    m = time_major(mask.astype(x.dtype))[..., None]  # (L, B, 1)
    xs = (time_major(gates_in["forward"]), m,
          time_major(gates_in["backward"])[::-1], m[::-1])

    def cell(carry, gates, w_hh, valid):
      hid, mem = carry
      gates = gates + hid @ w_hh
      i, f, g, o = jnp.split(gates, 4, axis=-1)
      mem = jax.nn.sigmoid(f) * mem + jax.nn.sigmoid(i) * jnp.tanh(g)
      hid = jax.nn.sigmoid(o) * jnp.tanh(mem)
      # Padded steps keep a zero state, so the backward pass starts fresh at v_len - 1.
      return (hid * valid, mem * valid)

    def step(carry, inputs):
      fwd, bwd = carry
      g_f, m_f, g_b, m_b = inputs
      fwd = cell(fwd, g_f, params["forward"]["w_hh"], m_f)
      bwd = cell(bwd, g_b, params["backward"]["w_hh"], m_b)
      return (fwd, bwd), (fwd[0], bwd[0])

    zeros = jnp.zeros((x.shape[0], h), x.dtype)
    _, (out_f, out_b) = jax.lax.scan(step, ((zeros, zeros), (zeros, zeros)), xs, unroll=4)
    out = jnp.concatenate([out_f, out_b[::-1]], axis=-1)  # (L, B, 2H)
    return time_major(out)


class LSTMEncoder(nn.Module):
  """BiLSTM followed by a Linear(2H -> D) (EMB's `start_encoder` / `end_encoder`)."""

  hidden: int

  @nn.compact
  def __call__(self, x, mask):
    return Dense(self.hidden, "dense_output")(BiLSTM(self.hidden, name="rnn")(x, mask))


class SpanHead(nn.Module):
  """Linear(2D -> D) - ReLU - Linear(D -> 1) on [features, x]."""

  hidden: int

  @nn.compact
  def __call__(self, features, x):
    y = nn.relu(Dense(self.hidden, "dense_in")(jnp.concatenate([features, x], axis=-1)))
    return Dense(1, "dense_out")(y)[..., 0]


class SpanPredictor(nn.Module):
  """Start/end logits (B, L), -1e30 on padding: hs = Enc_s(x), he = Enc_e(hs)."""

  hidden: int

  @nn.compact
  def __call__(self, x, mask):
    start_features = LSTMEncoder(self.hidden, name="start_encoder")(x, mask)
    end_features = LSTMEncoder(self.hidden, name="end_encoder")(start_features, mask)
    start = SpanHead(self.hidden, name="start_head")(start_features, x)
    end = SpanHead(self.hidden, name="end_head")(end_features, x)
    return mask_logits(start, mask), mask_logits(end, mask)
