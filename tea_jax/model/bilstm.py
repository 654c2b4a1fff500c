"""The BiLSTMs of the span predictors: each sample's valid prefix, both directions, zero on padding.

PyTorch LSTM conventions (gate order i, f, g, o; two biases; weights and biases
U(-1/sqrt(H), 1/sqrt(H))) so EMB checkpoints import unchanged.

Implementations of the same BiLSTM, with the same parameters (checkpoints do not depend on the
choice; `model.lstm` selects it):
  "scan"   a `jax.lax.scan` over time with its own backward pass (`lstm_lanes`); runs everywhere.
  "pallas" the same recurrence as Pallas kernels (tea_jax/model/lstm_kernel.py): all time steps of
           a direction in one kernel launch on a GPU instead of several launches per step, which is
           what bounds the step time there; interpreted (slow, for tests) elsewhere.
  "auto"   "pallas" on a GPU, "scan" elsewhere.
  "cudnn"  cuDNN's fused RNN kernels through `jax.experimental.rnn.lstm` (CUDA GPUs only).
           cuDNN uses TF32 for float32 matmuls unless `jax_default_matmul_precision` is "highest".

Both directions of a BiLSTM are lanes of one recurrence (one scan or one kernel launch), each
lane with its own weights (a batched matmul per step). Several BiLSTMs that read inputs of the
same shape and mask (the start encoders of the video and the paragraph predictors, then their end
encoders) share one recurrence too (`bilstms`), except on the CPU, where XLA runs separate scans
on separate threads at once, which is faster there.
"""

import functools
import math

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax.experimental import rnn

from tea_jax import config_checks
from tea_jax.errors import ConfigError
from tea_jax.model import lstm_kernel
from tea_jax.model.layers import uniform_init

_DIRECTIONS = ("forward", "backward")


def resolve_implementation(implementation: str) -> str:
  """The implementation asked for (one of config_checks.LSTM_IMPLEMENTATIONS; ConfigError
  otherwise): "auto" is "pallas" on a GPU and "scan" elsewhere (`bilstms` still falls back to
  the scan if the kernels do not compile for its shapes)."""
  config_checks.check_fields({"lstm": implementation},
                             {"lstm": config_checks.one_of(*config_checks.LSTM_IMPLEMENTATIONS)},
                             prefix="model")
  if implementation == "auto":
    return "pallas" if jax.default_backend() == "gpu" else "scan"
  return implementation


def _engine(implementation: str, lanes: int, steps: int, batch: int, hidden: int, dtype) -> str:
  """The implementation that runs: as resolved, except that "auto" takes the scan (with one
  warning) where the Pallas kernels do not compile for these shapes on this GPU."""
  engine = resolve_implementation(implementation)
  if (implementation == "auto" and engine == "pallas"
      and not lstm_kernel.compiles(steps, lanes, batch, hidden, jnp.dtype(dtype).name)):
    return "scan"
  return engine


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
  state, like PyTorch's packed sequences. Both directions advance in one recurrence.
  """

  hidden: int
  implementation: str = "scan"

  @nn.compact
  def weights(self, input_dim: int) -> dict[str, jax.Array]:
    """The parameters {direction}_{w_ih, w_hh, b_ih, b_hh} (weights stored as (in, 4H))."""
    h = self.hidden
    init = uniform_init(1.0 / math.sqrt(h))
    shapes = dict(w_ih=(input_dim, 4 * h), w_hh=(h, 4 * h), b_ih=(4 * h,), b_hh=(4 * h,))
    return {f"{d}_{k}": self.param(f"{d}_{k}", init, shape)
            for d in _DIRECTIONS for k, shape in shapes.items()}

  def __call__(self, x, mask):
    # x (B, L, Din), mask (B, L) with the valid frames first -> (B, L, 2H).
    return bilstms([self.weights(x.shape[-1])], [x], mask, self.implementation)[0]


def bilstms(weights, inputs, mask, implementation: str = "scan"):
  """Outputs (B, L, 2H) of several independent BiLSTMs (parameters `weights[n]`, as returned by
  BiLSTM.weights) over inputs (B, L, Din) that share one mask (B, L); one recurrence for all (one
  per BiLSTM for the scan on a CPU)."""
  steps, batch = mask.shape[1], mask.shape[0]
  hidden = weights[0]["forward_w_hh"].shape[0]
  implementation = _engine(implementation, 2 * len(weights), steps, batch, hidden, inputs[0].dtype)
  if len(weights) > 1 and implementation == "scan" and jax.default_backend() == "cpu":
    return [y for w, x in zip(weights, inputs) for y in bilstms([w], [x], mask, implementation)]
  if implementation == "cudnn":
    lengths = jnp.sum(mask, axis=-1).astype(jnp.int32)
    return [cudnn_bilstm(x, lengths, pack_cudnn_weights(w), w["forward_w_hh"].shape[0])
            for w, x in zip(weights, inputs)]
  time_major = lambda a: jnp.swapaxes(a, 0, 1)
  m = time_major(mask.astype(inputs[0].dtype))[..., None]  # (L, B, 1)
  # Input projections for all steps at once; the recurrence only carries the recurrent matmul.
  # Lanes: forward, backward (time-reversed) of each BiLSTM in turn.
  gates, masks = [], []
  for w, x in zip(weights, inputs):
    for d in _DIRECTIONS:
      gin = time_major(x @ w[f"{d}_w_ih"] + w[f"{d}_b_ih"] + w[f"{d}_b_hh"])  # (L, B, 4H)
      gates.append(gin if d == "forward" else gin[::-1])
      masks.append(m if d == "forward" else m[::-1])
  w_hh = jnp.stack([w[f"{d}_w_hh"] for w in weights for d in _DIRECTIONS])  # (K, H, 4H)
  out = lstm_lanes(tuple(gates), tuple(masks), w_hh, implementation)  # K x (L, B, H)
  return [time_major(jnp.concatenate([out[2 * n], out[2 * n + 1][::-1]], axis=-1))
          for n in range(len(weights))]


def _cell(gates_in, valid, hid, mem, w_hh):
  """One masked LSTM step of every lane: h, c, and (c_prev, gate activations, tanh c) for the
  backward pass. gates_in (K, B, 4H), valid (K, B, 1), hid and mem (K, B, H), w_hh (K, H, 4H)."""
  h = hid.shape[-1]
  z = gates_in + jnp.matmul(hid, w_hh)
  i = jax.nn.sigmoid(z[..., :h])
  f = jax.nn.sigmoid(z[..., h:2 * h])
  g = jnp.tanh(z[..., 2 * h:3 * h])
  o = jax.nn.sigmoid(z[..., 3 * h:])
  # Padded steps keep a zero state, so the backward direction starts fresh at v_len - 1.
  new_mem = (f * mem + i * g) * valid
  tanh_mem = jnp.tanh(new_mem)
  saved = (mem, jnp.concatenate([i, f, g, o], axis=-1), tanh_mem)
  return o * tanh_mem * valid, new_mem, saved


def _unstack(x):
  """(K, ...) -> K arrays."""
  return tuple(x[k] for k in range(x.shape[0]))


def _scan_forward(gates_in, masks, w_hh):
  """Hidden states (K x (L, B, H)) and residuals ((L, K, B, .) each) of the lanes' scan. The
  lanes' sequences stay separate arrays (stacked per step only), so that nothing (L, K, ...)-shaped
  but the residuals is copied together."""
  zeros = jnp.zeros((len(gates_in),) + gates_in[0].shape[1:-1] + (w_hh.shape[1],),
                    gates_in[0].dtype)

  def step(carry, inputs):
    hid, mem = carry
    gates_t, masks_t = inputs
    new_hid, new_mem, saved = _cell(jnp.stack(gates_t), jnp.stack(masks_t), hid, mem, w_hh)
    return (new_hid, new_mem), (_unstack(new_hid), saved)

  _, (out, saved) = jax.lax.scan(step, (zeros, zeros), (gates_in, masks), unroll=4)
  return out, saved


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
  return jnp.matmul(dz, w_hh_t), d_cell * f, dz


def _scan_backward(d_out, masks, saved, w_hh):
  """Gate gradients (K x (L, B, 4H)) of the lanes from their outputs' cotangents."""
  zeros = jnp.zeros((len(d_out),) + d_out[0].shape[1:], d_out[0].dtype)
  w_hh_t = jnp.swapaxes(w_hh, 1, 2)  # transposed once, not at every step

  def step(carry, inputs):
    d_hid, d_mem = carry
    d_out_t, masks_t, s = inputs
    d_hid, d_mem, dz = _cell_backward(jnp.stack(d_out_t), jnp.stack(masks_t), d_hid, d_mem, s,
                                      w_hh_t)
    return (d_hid, d_mem), _unstack(dz)

  _, dz = jax.lax.scan(step, (zeros, zeros), (d_out, masks, saved), reverse=True, unroll=1)
  return dz


def _forward(gates_in, masks, w_hh, engine):
  if engine == "pallas":
    out, saved = lstm_kernel.lstm_forward(jnp.stack(gates_in, 1), jnp.stack(masks, 1), w_hh)
    return _unstack(jnp.swapaxes(out, 0, 1)), saved
  return _scan_forward(gates_in, masks, w_hh)


@functools.partial(jax.custom_vjp, nondiff_argnums=(3,))
def lstm_lanes(gates_in, masks, w_hh, engine="scan"):
  """K independent masked LSTMs ("lanes") over time-major gate inputs (K arrays (L, B, 4H)) with
  masks (K arrays (L, B, 1)) and recurrent weights (K, H, 4H), from zero states; returns their
  hidden states (K arrays (L, B, H)). `engine` is "scan" or "pallas" (the same arithmetic and
  residuals).

  Its own backward pass (below) instead of differentiating the scan: the recurrent weights'
  gradient is one matmul over all steps after the reverse recurrence, not a per-step accumulation
  inside it, which made autodiff's backward 6.5x the forward on the CPU."""
  return _forward(gates_in, masks, w_hh, engine)[0]


def _lstm_lanes_fwd(gates_in, masks, w_hh, engine):
  out, saved = _forward(gates_in, masks, w_hh, engine)
  return out, (out, saved, masks, w_hh)


def _lstm_lanes_bwd(engine, residuals, d_out):
  out, saved, masks, w_hh = residuals
  if engine == "pallas":
    dz = lstm_kernel.lstm_backward(jnp.stack(d_out, 1), jnp.stack(masks, 1), saved, w_hh)
    dz = _unstack(jnp.swapaxes(dz, 0, 1))
  else:
    dz = _scan_backward(d_out, masks, saved, w_hh)
  # dW_hh = sum over steps and samples of h_prev^T dz: one matmul per lane. h_prev is the output
  # one step earlier (zero before the first step).
  h_prev = lambda o: jnp.concatenate([jnp.zeros_like(o[:1]), o[:-1]])
  d_w_hh = jnp.stack([jnp.einsum("lbh,lbg->hg", h_prev(o), g) for o, g in zip(out, dz)])
  return dz, tuple(jnp.zeros_like(m) for m in masks), d_w_hh


lstm_lanes.defvjp(_lstm_lanes_fwd, _lstm_lanes_bwd)
