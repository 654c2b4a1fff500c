"""The BiLSTM of the span predictor: each sample's valid prefix, both directions, zero on padding.

PyTorch LSTM conventions (gate order i, f, g, o; two biases; weights and biases
U(-1/sqrt(H), 1/sqrt(H))) so EMB checkpoints import unchanged.

Two implementations of the same BiLSTM, with the same parameters (checkpoints do not depend on the
choice; `model.lstm` selects it):
  "scan"  a `jax.lax.scan` over time, both directions in one scan, with its own backward pass
          (`lstm_pair`); runs everywhere (the default).
  "cudnn" cuDNN's fused RNN kernels through `jax.experimental.rnn.lstm` (CUDA GPUs only): one kernel
          per direction instead of 128 small steps, which is what bounds the step time on a GPU.
          cuDNN uses TF32 for float32 matmuls unless `jax_default_matmul_precision` is "highest".
"""

import math

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax.experimental import rnn

from tea_jax.errors import ConfigError
from tea_jax.model.config import LSTM_IMPLEMENTATIONS
from tea_jax.model.layers import uniform_init

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
    raise ConfigError(f"model.lstm='cudnn' needs a CUDA GPU (JAX's backend is "
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
    out_f, out_b = lstm_pair(time_major(gates_in["forward"]), m,
                             time_major(gates_in["backward"])[::-1], m[::-1],
                             params["forward"]["w_hh"], params["backward"]["w_hh"])
    out = jnp.concatenate([out_f, out_b[::-1]], axis=-1)  # (L, B, 2H)
    return time_major(out)


def _cell(gates_in, valid, hid, mem, w_hh):
  """One masked LSTM step: h, c, and (c_prev, gate activations, tanh c) for the backward pass."""
  h = hid.shape[-1]
  z = gates_in + hid @ w_hh
  i = jax.nn.sigmoid(z[..., :h])
  f = jax.nn.sigmoid(z[..., h:2 * h])
  g = jnp.tanh(z[..., 2 * h:3 * h])
  o = jax.nn.sigmoid(z[..., 3 * h:])
  # Padded steps keep a zero state, so the backward direction starts fresh at v_len - 1.
  new_mem = (f * mem + i * g) * valid
  tanh_mem = jnp.tanh(new_mem)
  saved = (mem, jnp.concatenate([i, f, g, o], axis=-1), tanh_mem)
  return o * tanh_mem * valid, new_mem, saved


def _pair_forward(gin_f, m_f, gin_b, m_b, w_f, w_b):
  zeros = jnp.zeros(gin_f.shape[1:-1] + (w_f.shape[0],), gin_f.dtype)

  def step(carry, inputs):
    (h_f, c_f), (h_b, c_b) = carry
    gf, mf, gb, mb = inputs
    new_hf, new_cf, saved_f = _cell(gf, mf, h_f, c_f, w_f)
    new_hb, new_cb, saved_b = _cell(gb, mb, h_b, c_b, w_b)
    return ((new_hf, new_cf), (new_hb, new_cb)), (new_hf, new_hb, (saved_f, saved_b))

  _, (out_f, out_b, saved) = jax.lax.scan(step, ((zeros, zeros), (zeros, zeros)),
                                          (gin_f, m_f, gin_b, m_b), unroll=4)
  return (out_f, out_b), saved


@jax.custom_vjp
def lstm_pair(gin_f, m_f, gin_b, m_b, w_f, w_b):
  """Two independent masked LSTMs over time-major gate inputs (L, B, 4H) from zero states; returns
  their hidden states (L, B, H). Its own backward pass (below) instead of differentiating the scan:
  the recurrent weights' gradient is one matmul over all steps after the reverse scan, not a
  per-step accumulation inside it, which made autodiff's backward 6.5x the forward on the CPU."""
  return _pair_forward(gin_f, m_f, gin_b, m_b, w_f, w_b)[0]


def _lstm_pair_fwd(gin_f, m_f, gin_b, m_b, w_f, w_b):
  outs, saved = _pair_forward(gin_f, m_f, gin_b, m_b, w_f, w_b)
  return outs, (outs, saved, m_f, m_b, w_f, w_b)


def _cell_backward(d_out, valid, d_hid, d_mem, saved, w_hh_t):
  """Gradients of one _cell step: (d h_prev, d c_prev, d pre-activation gates)."""
  c_prev, acts, tanh_mem = saved
  h = c_prev.shape[-1]
  i, f, g, o = acts[..., :h], acts[..., h:2 * h], acts[..., 2 * h:3 * h], acts[..., 3 * h:]
  dh = (d_hid + d_out) * valid
  d_new_mem = d_mem + dh * o * (1.0 - tanh_mem * tanh_mem)
  d_cell = d_new_mem * valid  # through new_mem = (f c + i g) * valid
  dz = jnp.concatenate([d_cell * g * i * (1.0 - i), d_cell * c_prev * f * (1.0 - f),
                        d_cell * i * (1.0 - g * g), dh * tanh_mem * o * (1.0 - o)], axis=-1)
  return dz @ w_hh_t, d_cell * f, dz


def _lstm_pair_bwd(residuals, cotangents):
  (out_f, out_b), saved, m_f, m_b, w_f, w_b = residuals
  d_out_f, d_out_b = cotangents
  zeros = jnp.zeros(d_out_f.shape[1:], d_out_f.dtype)
  w_f_t, w_b_t = w_f.T, w_b.T  # transposed once, not at every step

  def step(carry, inputs):
    (dh_f, dc_f), (dh_b, dc_b) = carry
    do_f, mf, s_f, do_b, mb, s_b = inputs
    dh_f, dc_f, dz_f = _cell_backward(do_f, mf, dh_f, dc_f, s_f, w_f_t)
    dh_b, dc_b, dz_b = _cell_backward(do_b, mb, dh_b, dc_b, s_b, w_b_t)
    return ((dh_f, dc_f), (dh_b, dc_b)), (dz_f, dz_b)

  _, (dz_f, dz_b) = jax.lax.scan(step, ((zeros, zeros), (zeros, zeros)),
                                 (d_out_f, m_f, saved[0], d_out_b, m_b, saved[1]),
                                 reverse=True, unroll=1)
  # dW_hh = sum over steps and samples of h_prev^T dz: one matmul per direction. h_prev is the
  # output one step earlier (zero before the first step).
  h_prev = lambda out: jnp.concatenate([jnp.zeros_like(out[:1]), out[:-1]])
  dw_f = jnp.einsum("lbh,lbg->hg", h_prev(out_f), dz_f)
  dw_b = jnp.einsum("lbh,lbg->hg", h_prev(out_b), dz_b)
  return dz_f, jnp.zeros_like(m_f), dz_b, jnp.zeros_like(m_b), dw_f, dw_b


lstm_pair.defvjp(_lstm_pair_fwd, _lstm_pair_bwd)
