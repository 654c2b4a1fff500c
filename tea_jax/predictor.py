"""Conditioned span predictor: two BiLSTM encoders that respect each sample's length, and MLP heads.

MODEL.md section 8. PyTorch LSTM conventions (gate order i, f, g, o; two biases; weights and biases
U(-1/sqrt(H), 1/sqrt(H))) so EMB checkpoints import unchanged.

Two implementations of the same BiLSTM, with the same parameters (checkpoints do not depend on the
choice; `model.lstm` selects it):
  "scan"  a `jax.lax.scan` over time, both directions in one scan; runs everywhere (the default).
  "cudnn" cuDNN's fused RNN kernels through `jax.experimental.rnn.lstm` (CUDA GPUs only): one kernel
          per direction instead of 128 small steps, which is what bounds the step time on a GPU.
          cuDNN uses TF32 for float32 matmuls unless `jax_default_matmul_precision` is "highest".
"""

import math

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax.experimental import rnn

from tea_jax.layers import Dense, mask_logits, uniform_init

LSTM_IMPLEMENTATIONS = ("scan", "cudnn")
_DIRECTIONS = ("forward", "backward")


def pack_cudnn_weights(params):
  """The flat weight vector cuDNN expects for a one-layer BiLSTM, from this module's parameters.

  Layout (jax.experimental.rnn's docstring): W_ih, W_hh of the forward then the backward direction,
  each as PyTorch's (4H, Din) row-major matrix, then b_ih, b_hh of each direction. Our matrices are
  stored transposed ((Din, 4H), so that x @ w works), hence the .T.
  """
  matrices = [params[f"{d}_{k}"].T.reshape(-1) for d in _DIRECTIONS for k in ("w_ih", "w_hh")]
  biases = [params[f"{d}_{k}"] for d in _DIRECTIONS for k in ("b_ih", "b_hh")]
  return jnp.concatenate(matrices + biases)


def cudnn_bilstm(x, lengths, flat_weights, hidden):
  """(B, L, 2H) outputs of cuDNN's BiLSTM over the first `lengths` steps of each sample, 0 after."""
  if jax.default_backend() != "gpu":
    raise ValueError(f"model.lstm='cudnn' needs a CUDA GPU (JAX's backend is "
                     f"{jax.default_backend()!r}); use model.lstm='scan'.")
  zeros = jnp.zeros((2, x.shape[0], hidden), x.dtype)
  out, _, _ = rnn.lstm(x, zeros, zeros, flat_weights, lengths, input_size=x.shape[-1],
                       hidden_size=hidden, num_layers=1, dropout=0.0, bidirectional=True)
  return out


class BiLSTM(nn.Module):
  """Bidirectional single-layer LSTM over the valid prefix of each sample, zero on padding.

  The forward direction runs t = 0..v_len-1 and the backward one t = v_len-1..0, both from a zero
  state, like PyTorch's packed sequences. Both directions advance in one scan.
  """

  hidden: int
  implementation: str = "scan"

  @nn.compact
  def __call__(self, x, mask):
    # x (B, L, Din), mask (B, L) with the valid frames first.
    h = self.hidden
    init = uniform_init(1.0 / math.sqrt(h))
    din = x.shape[-1]
    shapes = dict(w_ih=(din, 4 * h), w_hh=(h, 4 * h), b_ih=(4 * h,), b_hh=(4 * h,))
    flat = {f"{d}_{k}": self.param(f"{d}_{k}", init, shape)
            for d in _DIRECTIONS for k, shape in shapes.items()}
    if self.implementation == "cudnn":
      lengths = jnp.sum(mask, axis=-1).astype(jnp.int32)
      return cudnn_bilstm(x, lengths, pack_cudnn_weights(flat), h)
    if self.implementation != "scan":
      raise ValueError(f"model.lstm must be one of {LSTM_IMPLEMENTATIONS}, "
                       f"got {self.implementation!r}")
    params = {d: {k: flat[f"{d}_{k}"] for k in shapes} for d in _DIRECTIONS}
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
  lstm: str = "scan"

  @nn.compact
  def __call__(self, x, mask):
    rnn = BiLSTM(self.hidden, self.lstm, name="rnn")
    return Dense(self.hidden, "dense_output")(rnn(x, mask))


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
  lstm: str = "scan"

  @nn.compact
  def __call__(self, x, mask):
    start_features = LSTMEncoder(self.hidden, self.lstm, name="start_encoder")(x, mask)
    end_features = LSTMEncoder(self.hidden, self.lstm, name="end_encoder")(start_features, mask)
    start = SpanHead(self.hidden, name="start_head")(start_features, x)
    end = SpanHead(self.hidden, name="end_head")(end_features, x)
    return mask_logits(start, mask), mask_logits(end, mask)
