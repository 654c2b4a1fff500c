"""The LSTM recurrence as Pallas kernels: every time step of a lane in one kernel launch.

On a GPU the scan of tea_jax/model/bilstm.py launches several small kernels per time step (the
recurrent matmul, the gate activations, the state update), 128 steps per sequence, forward and
backward: thousands of launches of ~2 us each per training step, which is what bounds the step
time. These kernels run all steps of a lane inside one program instead (one program per lane, the
lanes of a call in parallel), with the same masked-cell arithmetic and the same residuals as the
scan's forward, so that `lstm_lanes` can use either engine in either direction.

Layout (time-major, K independent lanes, e.g. both directions of several BiLSTMs):
  gates_in (L, K, B, 4H)  input projections plus biases, gate order i, f, g, o
  mask     (L, K, B, 1)   1 on valid steps (the backward lanes read time-reversed sequences)
  w_hh     (K, H, 4H)     recurrent weights
The kernels need B and H powers of two of at least 16 (Triton's matmul tiles); other sizes are
padded exactly: padded samples are masked and padded hidden units have zero weights, so their
state stays 0 and they feed nothing into the real units.

On a CPU (tests) the same kernels run in Pallas' interpret mode.
"""

import functools
import logging

import jax
import jax.numpy as jnp
from jax.experimental import pallas as pl
from jax.experimental.pallas import triton as plgpu

log = logging.getLogger(__name__)

# Smallest tile Triton's matmul takes along each axis.
_MIN_TILE = 16


def interpret_mode() -> bool:
  """Whether Pallas kernels must be interpreted (any backend but a GPU)."""
  return jax.default_backend() != "gpu"


def _matmul_precision():
  """The matmul precision of the kernels: as the rest of the model (jax_default_matmul_precision),
  i.e. TF32 on GPUs by default, full float32 when the config asks for "highest"/"float32"."""
  configured = jax.config.jax_default_matmul_precision
  if configured in ("highest", "float32", "HIGHEST", "FLOAT32"):
    return jax.lax.Precision.HIGHEST
  return jax.lax.Precision.DEFAULT


def _compiler_params(num_warps: int):
  # No software pipelining: the recurrent weights are re-read at every step and a pipelined copy of
  # them would not fit in shared memory; the loop carries a true dependency anyway.
  return plgpu.CompilerParams(num_warps=num_warps, num_stages=1)


def _gate_columns(gate: int, hidden: int):
  return pl.ds(gate * hidden, hidden)


def _forward_kernel(gin_ref, mask_ref, w_ref, out_ref, mem_prev_ref, acts_ref, tanh_mem_ref):
  """One lane (program_id 0) over all steps; stores h and the scan's residuals per step."""
  lane = pl.program_id(0)
  steps, _, batch, hidden = out_ref.shape
  precision = _matmul_precision()

  def step(t, carry):
    hid, mem = carry
    valid = mask_ref[t, lane]  # (B, 1)
    acts = []
    for gate, activation in enumerate((jax.nn.sigmoid, jax.nn.sigmoid, jnp.tanh, jax.nn.sigmoid)):
      cols = _gate_columns(gate, hidden)
      z = gin_ref[t, lane, :, cols] + jnp.dot(hid, w_ref[lane, :, cols], precision=precision)
      acts.append(activation(z))
      acts_ref[t, lane, :, cols] = acts[-1]
    i, f, g, o = acts
    # Padded steps keep a zero state, so the backward direction starts fresh at v_len - 1.
    new_mem = (f * mem + i * g) * valid
    tanh_mem = jnp.tanh(new_mem)
    new_hid = o * tanh_mem * valid
    mem_prev_ref[t, lane] = mem
    tanh_mem_ref[t, lane] = tanh_mem
    out_ref[t, lane] = new_hid
    return new_hid, new_mem

  zeros = jnp.zeros((batch, hidden), jnp.float32)
  jax.lax.fori_loop(0, steps, step, (zeros, zeros))


def _backward_kernel(d_out_ref, mask_ref, mem_prev_ref, acts_ref, tanh_mem_ref, w_t_ref, dz_ref):
  """One lane over all steps in reverse: the pre-activation gate gradients dz per step."""
  lane = pl.program_id(0)
  steps, _, batch, hidden = d_out_ref.shape
  precision = _matmul_precision()

  def step(s, carry):
    d_hid, d_mem = carry
    t = steps - 1 - s
    valid = mask_ref[t, lane]
    i, f, g, o = (acts_ref[t, lane, :, _gate_columns(gate, hidden)] for gate in range(4))
    mem_prev = mem_prev_ref[t, lane]
    tanh_mem = tanh_mem_ref[t, lane]
    dh = (d_hid + d_out_ref[t, lane]) * valid
    d_cell = (d_mem + dh * o * (1.0 - tanh_mem * tanh_mem)) * valid
    dz = (d_cell * g * i * (1.0 - i), d_cell * mem_prev * f * (1.0 - f),
          d_cell * i * (1.0 - g * g), dh * tanh_mem * o * (1.0 - o))
    d_hid_prev = jnp.zeros((batch, hidden), jnp.float32)
    for gate, dz_gate in enumerate(dz):
      rows = _gate_columns(gate, hidden)
      dz_ref[t, lane, :, rows] = dz_gate
      d_hid_prev = d_hid_prev + jnp.dot(dz_gate, w_t_ref[lane, rows, :], precision=precision)
    return d_hid_prev, d_cell * f

  zeros = jnp.zeros((batch, hidden), jnp.float32)
  jax.lax.fori_loop(0, steps, step, (zeros, zeros))


def _tile(n: int) -> int:
  """The padded size of a kernel axis: a power of two, at least the matmul tile."""
  return max(_MIN_TILE, 1 << (n - 1).bit_length())


def _pad_gates(x, hidden, padded_hidden):
  """(..., 4H) -> (..., 4H') with each gate block padded by zeros to H'."""
  if padded_hidden == hidden:
    return x
  x = x.reshape(x.shape[:-1] + (4, hidden))
  x = jnp.pad(x, [(0, 0)] * (x.ndim - 1) + [(0, padded_hidden - hidden)])
  return x.reshape(x.shape[:-2] + (4 * padded_hidden,))


def _unpad_gates(x, hidden, padded_hidden):
  """Inverse of _pad_gates."""
  if padded_hidden == hidden:
    return x
  x = x.reshape(x.shape[:-1] + (4, padded_hidden))[..., :hidden]
  return x.reshape(x.shape[:-2] + (4 * hidden,))


def _pad_axis(x, axis, size):
  pad = size - x.shape[axis]
  if pad == 0:
    return x
  widths = [(0, 0)] * x.ndim
  widths[axis] = (0, pad)
  return jnp.pad(x, widths)


def lstm_forward(gates_in, mask, w_hh, *, num_warps: int = 8, interpret: bool | None = None):
  """Hidden states (L, K, B, H) of K masked LSTM lanes from zero states, and the residuals of
  their backward pass: (c_prev (L, K, B, H), activations i, f, g, o (L, K, B, 4H), tanh c (L, K,
  B, H)), exactly what the scan saves."""
  steps, lanes, batch, gates = gates_in.shape
  hidden = gates // 4
  b_pad, h_pad = _tile(batch), _tile(hidden)
  gin = _pad_axis(_pad_gates(gates_in, hidden, h_pad), 2, b_pad)
  m = _pad_axis(mask.astype(gates_in.dtype), 2, b_pad)
  w = _pad_axis(_pad_gates(w_hh, hidden, h_pad), 1, h_pad)
  state = jax.ShapeDtypeStruct((steps, lanes, b_pad, h_pad), gates_in.dtype)
  acts = jax.ShapeDtypeStruct((steps, lanes, b_pad, 4 * h_pad), gates_in.dtype)
  interpret = interpret_mode() if interpret is None else interpret
  out, mem_prev, acts, tanh_mem = pl.pallas_call(
      _forward_kernel, out_shape=(state, state, acts, state), grid=(lanes,),
      compiler_params=None if interpret else _compiler_params(num_warps),
      interpret=interpret, name="lstm_forward")(gin, m, w)
  crop = lambda a: a[:, :, :batch, :hidden]
  return crop(out), (crop(mem_prev), _unpad_gates(acts[:, :, :batch], hidden, h_pad),
                     crop(tanh_mem))


def lstm_backward(d_out, mask, saved, w_hh, *, num_warps: int = 8,
                  interpret: bool | None = None):
  """Gradients (L, K, B, 4H) of the pre-activation gates, from the hidden states' cotangents
  d_out (L, K, B, H) and the forward's residuals `saved`."""
  steps, lanes, batch, hidden = d_out.shape
  b_pad, h_pad = _tile(batch), _tile(hidden)
  mem_prev, acts, tanh_mem = saved
  pad_state = lambda a: _pad_axis(_pad_axis(a, 3, h_pad), 2, b_pad)
  w = _pad_axis(_pad_gates(w_hh, hidden, h_pad), 1, h_pad)  # (K, H', 4H')
  interpret = interpret_mode() if interpret is None else interpret
  dz = pl.pallas_call(
      _backward_kernel,
      out_shape=jax.ShapeDtypeStruct((steps, lanes, b_pad, 4 * h_pad), d_out.dtype),
      grid=(lanes,), compiler_params=None if interpret else _compiler_params(num_warps),
      interpret=interpret, name="lstm_backward")(
          pad_state(d_out), _pad_axis(mask.astype(d_out.dtype), 2, b_pad), pad_state(mem_prev),
          _pad_axis(_pad_gates(acts, hidden, h_pad), 2, b_pad), pad_state(tanh_mem),
          jnp.swapaxes(w, 1, 2))
  return _unpad_gates(dz[:, :, :batch], hidden, h_pad)


@functools.cache
def compiles(steps: int, lanes: int, batch: int, hidden: int, dtype: str = "float32") -> bool:
  """Whether both kernels compile for these shapes on this backend (once per shape and process).
  model.lstm="auto" checks this before choosing the kernels, so that a GPU or Triton version they
  do not compile on (too little shared memory, an unsupported tile) trains with the scan, after
  one warning, instead of failing."""
  state = jax.ShapeDtypeStruct((steps, lanes, batch, hidden), dtype)
  gates = jax.ShapeDtypeStruct((steps, lanes, batch, 4 * hidden), dtype)
  mask = jax.ShapeDtypeStruct((steps, lanes, batch, 1), dtype)
  w_hh = jax.ShapeDtypeStruct((lanes, hidden, 4 * hidden), dtype)
  try:
    jax.jit(lstm_forward).lower(gates, mask, w_hh).compile()
    jax.jit(lstm_backward).lower(state, mask, (state, gates, state), w_hh).compile()
  except Exception as e:  # pylint: disable=broad-except  # any lowering or compiler failure
    log.warning("model.lstm=auto: the Pallas LSTM kernels do not compile for %d lanes of "
                "(L=%d, B=%d, H=%d) here (%s: %s); using the scan", lanes, steps, batch, hidden,
                type(e).__name__, str(e).splitlines()[0][:300] if str(e) else "")
    return False
  return True
