"""The LSTM recurrence as Pallas kernels: every time step of a lane in one kernel launch.

On a GPU the scan of tea_jax/model/bilstm.py launches several small kernels per time step (the
recurrent matmul, the gate activations, the state update), 128 steps per sequence, forward and
backward: thousands of launches of ~2 us each per training step, which is what bounds the step
time. These kernels run all steps of a lane inside one program instead (one program per lane and
tile of 16 samples, all of them in parallel), with the same masked-cell arithmetic and the same
residuals as the scan's forward, so that `lstm_lanes` can use either engine in either direction.

Layout (time-major, K independent lanes, e.g. both directions of several BiLSTMs):
  gates_in (L, K, B, 4H)  input projections plus biases, gate order i, f, g, o
  mask     (L, K, B, 1)   1 on valid steps (the backward lanes read time-reversed sequences)
  w_hh     (K, H, 4H)     recurrent weights
The kernels need B a multiple of 16 and H a power of two of at least 16 (Triton's matmul tiles);
other sizes are padded exactly: padded samples are masked and padded hidden units have zero
weights, so their state stays 0 and they feed nothing into the real units.

Precision of the recurrent matmuls: full float32 where jax_default_matmul_precision asks for it
("highest"); otherwise (the default, TF32 for XLA's own float32 matmuls on GPUs) three bfloat16
products of split operands (`_split`, `_product`), closer to float32 than TF32 and without the
per-step rounding of every operand element to TF32 that Triton's TF32 matmul emits.
`python bench/kernel_report.py` shows what the GPU compiler makes of these kernels.

On a CPU (tests) the same kernels run in Pallas' interpret mode.
"""

import functools
import logging
import operator

import jax
import jax.numpy as jnp
from jax.experimental import pallas as pl
from jax.experimental.pallas import triton as plgpu

log = logging.getLogger(__name__)

# Smallest tile Triton's matmul takes along each axis.
_MIN_TILE = 16
# Hidden units per block of the kernels' state (see _forward_kernel).
_WIDTH = 64


def interpret_mode() -> bool:
  """Whether Pallas kernels must be interpreted (any backend but a GPU)."""
  return jax.default_backend() != "gpu"


def _split_matmul() -> bool:
  """Whether the recurrent matmuls run as three bfloat16 products (the default) rather than in
  full float32 ("highest"/"float32" in jax_default_matmul_precision, as the tests ask)."""
  configured = jax.config.jax_default_matmul_precision
  return configured not in ("highest", "float32", "HIGHEST", "FLOAT32")


def _split(x):
  """(hi, lo): bfloat16 parts with hi + lo = x to 16 significant bits (float32 has 24)."""
  hi = x.astype(jnp.bfloat16)
  return hi, (x - hi.astype(jnp.float32)).astype(jnp.bfloat16)


def _product(a_parts, b_parts):
  """a @ b from the parts of _split (three bfloat16 products accumulated in float32, the small
  ones first: relative error ~2^-16, below TF32's 2^-11), or of one float32 pair in full float32."""
  dot = functools.partial(jnp.dot, preferred_element_type=jnp.float32)
  if len(a_parts) == 1:
    return dot(a_parts[0], b_parts[0], precision=jax.lax.Precision.HIGHEST)
  (a_hi, a_lo), (b_hi, b_lo) = a_parts, b_parts
  return (dot(a_lo, b_hi) + dot(a_hi, b_lo)) + dot(a_hi, b_hi)


def _compiler_params(num_warps: int):
  # No software pipelining: the recurrent weights are re-read at every step and a pipelined copy of
  # them would not fit in shared memory; the loop carries a true dependency anyway.
  return plgpu.CompilerParams(num_warps=num_warps, num_stages=1)


def _columns(gate: int, block: int, hidden: int, width: int):
  """Columns of hidden units [block * width, (block + 1) * width) of a gate in a (., 4H) array."""
  return pl.ds(gate * hidden + block * width, width)


def _units(block: int, width: int):
  """Columns of hidden units [block * width, (block + 1) * width) in a (., H) array."""
  return pl.ds(block * width, width)


def _per_step(lane, step):
  """`lane`, computed from the step index (step >> 30 is 0 for any sequence length), so that
  the compiler does not hoist the recurrent weights' addresses out of the time loop: held across
  it they take a 64-bit register pair per 16-byte vector (64 pairs per thread at H = 128) and
  spill; recomputed, they cost a few integer instructions per vector and step."""
  return lane + jax.lax.shift_right_logical(step, 30)


def _once(ref, *index):
  """ref[index], read once: first out of the cache, so that it does not evict the weights."""
  return plgpu.load(ref.at[index], eviction_policy="evict_first")


def _weights(refs, *index):
  """The recurrent weights' parts at `index`, read at every step: the high part (or the float32
  weights) is kept in the SM's L1 cache where it fits (128 KiB of bfloat16 at H = 128), the low
  part streams from L2."""
  policies = ("evict_last", "evict_first")[:len(refs)]
  return [plgpu.load(ref.at[index], eviction_policy=policy) for ref, policy in zip(refs, policies)]


_ACTIVATIONS = (jax.nn.sigmoid, jax.nn.sigmoid, jnp.tanh, jax.nn.sigmoid)  # i, f, g, o


def _forward_kernel(gin_ref, mask_ref, *refs, split: bool, width: int):
  """One lane (program_id 0) and one tile of samples (program_id 1) over all steps; stores h and
  the scan's residuals per step. refs: the recurrent weights (their bfloat16 parts if `split`),
  then the outputs. The state is carried as blocks of `width` hidden units, each block's gates
  computed and used before the next block's, so that one block's operands are live at a time."""
  w_refs, (out_ref, mem_prev_ref, acts_ref, tanh_mem_ref) = refs[:-4], refs[-4:]
  lane = pl.program_id(0)
  rows = pl.ds(pl.program_id(1) * _MIN_TILE, _MIN_TILE)
  steps, hidden = out_ref.shape[0], out_ref.shape[-1]
  blocks = hidden // width

  def step(t, carry):
    hid, mem = carry  # blocks x (b, width)
    valid = mask_ref[t, lane, rows]  # (b, 1)
    w_lane = _per_step(lane, t)
    hid_parts = [_split(h) if split else (h,) for h in hid]
    new_hid, new_mem = [], []
    for j in range(blocks):
      acts = []
      for gate, activation in enumerate(_ACTIVATIONS):
        cols = _columns(gate, j, hidden, width)
        recurrent = functools.reduce(operator.add, (
            _product(hid_parts[k], _weights(w_refs, w_lane, _units(k, width), cols))
            for k in range(blocks)))
        acts.append(activation(_once(gin_ref, t, lane, rows, cols) + recurrent))
        acts_ref[t, lane, rows, cols] = acts[-1]
      i, f, g, o = acts
      # Padded steps keep a zero state, so the backward direction starts fresh at v_len - 1.
      new_mem.append((f * mem[j] + i * g) * valid)
      tanh_mem = jnp.tanh(new_mem[-1])
      new_hid.append(o * tanh_mem * valid)
      units = _units(j, width)
      mem_prev_ref[t, lane, rows, units] = mem[j]
      tanh_mem_ref[t, lane, rows, units] = tanh_mem
      out_ref[t, lane, rows, units] = new_hid[-1]
    return tuple(new_hid), tuple(new_mem)

  zeros = (jnp.zeros((_MIN_TILE, width), jnp.float32),) * blocks
  jax.lax.fori_loop(0, steps, step, (zeros, zeros))


def _backward_kernel(d_out_ref, mask_ref, mem_prev_ref, acts_ref, tanh_mem_ref, *refs,
                     split: bool, width: int):
  """One lane and one tile of samples over all steps in reverse: the pre-activation gate
  gradients dz per step. refs: the transposed recurrent weights (or their parts), then dz. Blocks
  of `width` hidden units as in the forward kernel."""
  w_t_refs, dz_ref = refs[:-1], refs[-1]
  lane = pl.program_id(0)
  rows = pl.ds(pl.program_id(1) * _MIN_TILE, _MIN_TILE)
  steps, hidden = d_out_ref.shape[0], d_out_ref.shape[-1]
  blocks = hidden // width

  def step(s, carry):
    d_hid, d_mem = carry  # blocks x (b, width)
    t = steps - 1 - s
    valid = mask_ref[t, lane, rows]
    w_lane = _per_step(lane, s)
    d_hid_prev = [None] * blocks  # sums over the gates and blocks of dz @ w_hh^T
    d_mem_prev = []
    for k in range(blocks):
      units = _units(k, width)
      i, f, g, o = (_once(acts_ref, t, lane, rows, _columns(gate, k, hidden, width))
                    for gate in range(4))
      tanh_mem = _once(tanh_mem_ref, t, lane, rows, units)
      dh = (d_hid[k] + _once(d_out_ref, t, lane, rows, units)) * valid
      d_cell = (d_mem[k] + dh * o * (1.0 - tanh_mem * tanh_mem)) * valid
      mem_prev = _once(mem_prev_ref, t, lane, rows, units)
      dz = (d_cell * g * i * (1.0 - i), d_cell * mem_prev * f * (1.0 - f),
            d_cell * i * (1.0 - g * g), dh * tanh_mem * o * (1.0 - o))
      d_mem_prev.append(d_cell * f)
      for gate, dz_gate in enumerate(dz):
        cols = _columns(gate, k, hidden, width)
        dz_ref[t, lane, rows, cols] = dz_gate
        dz_parts = _split(dz_gate) if split else (dz_gate,)
        for j in range(blocks):
          term = _product(dz_parts, _weights(w_t_refs, w_lane, cols, _units(j, width)))
          d_hid_prev[j] = term if d_hid_prev[j] is None else d_hid_prev[j] + term
    return tuple(d_hid_prev), tuple(d_mem_prev)

  zeros = (jnp.zeros((_MIN_TILE, width), jnp.float32),) * blocks
  jax.lax.fori_loop(0, steps, step, (zeros, zeros))


def _tile(n: int) -> int:
  """The padded hidden size: a power of two, at least the matmul tile."""
  return max(_MIN_TILE, 1 << (n - 1).bit_length())


def _batch_tiles(batch: int) -> int:
  """Programs per lane: one per tile of _MIN_TILE samples (the samples are independent)."""
  return -(-batch // _MIN_TILE)


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


def _weight_parts(w, split: bool):
  """The recurrent weights as the kernels read them: their bfloat16 parts, split once per call
  instead of at every step, or themselves."""
  return _split(w) if split else (w,)


def lstm_forward(gates_in, mask, w_hh, *, num_warps: int = 8, interpret: bool | None = None):
  """Hidden states (L, K, B, H) of K masked LSTM lanes from zero states, and the residuals of
  their backward pass: (c_prev (L, K, B, H), activations i, f, g, o (L, K, B, 4H), tanh c (L, K,
  B, H)), exactly what the scan saves."""
  steps, lanes, batch, gates = gates_in.shape
  hidden = gates // 4
  tiles, h_pad = _batch_tiles(batch), _tile(hidden)
  b_pad = tiles * _MIN_TILE
  gin = _pad_axis(_pad_gates(gates_in, hidden, h_pad), 2, b_pad)
  m = _pad_axis(mask.astype(gates_in.dtype), 2, b_pad)
  w = _pad_axis(_pad_gates(w_hh, hidden, h_pad), 1, h_pad)
  split = _split_matmul()
  state = jax.ShapeDtypeStruct((steps, lanes, b_pad, h_pad), gates_in.dtype)
  acts = jax.ShapeDtypeStruct((steps, lanes, b_pad, 4 * h_pad), gates_in.dtype)
  interpret = interpret_mode() if interpret is None else interpret
  out, mem_prev, acts, tanh_mem = pl.pallas_call(
      functools.partial(_forward_kernel, split=split, width=min(h_pad, _WIDTH)),
      out_shape=(state, state, acts, state), grid=(lanes, tiles),
      compiler_params=None if interpret else _compiler_params(num_warps),
      interpret=interpret, name="lstm_forward")(gin, m, *_weight_parts(w, split))
  crop = lambda a: a[:, :, :batch, :hidden]
  return crop(out), (crop(mem_prev), _unpad_gates(acts[:, :, :batch], hidden, h_pad),
                     crop(tanh_mem))


def lstm_backward(d_out, mask, saved, w_hh, *, num_warps: int = 8,
                  interpret: bool | None = None):
  """Gradients (L, K, B, 4H) of the pre-activation gates, from the hidden states' cotangents
  d_out (L, K, B, H) and the forward's residuals `saved`."""
  steps, lanes, batch, hidden = d_out.shape
  tiles, h_pad = _batch_tiles(batch), _tile(hidden)
  b_pad = tiles * _MIN_TILE
  mem_prev, acts, tanh_mem = saved
  pad_state = lambda a: _pad_axis(_pad_axis(a, 3, h_pad), 2, b_pad)
  w_t = jnp.swapaxes(_pad_axis(_pad_gates(w_hh, hidden, h_pad), 1, h_pad), 1, 2)  # (K, 4H', H')
  split = _split_matmul()
  interpret = interpret_mode() if interpret is None else interpret
  dz = pl.pallas_call(
      functools.partial(_backward_kernel, split=split, width=min(h_pad, _WIDTH)),
      out_shape=jax.ShapeDtypeStruct((steps, lanes, b_pad, 4 * h_pad), d_out.dtype),
      grid=(lanes, tiles), compiler_params=None if interpret else _compiler_params(num_warps),
      interpret=interpret, name="lstm_backward")(
          pad_state(d_out), _pad_axis(mask.astype(d_out.dtype), 2, b_pad), pad_state(mem_prev),
          _pad_axis(_pad_gates(acts, hidden, h_pad), 2, b_pad), pad_state(tanh_mem),
          *_weight_parts(w_t, split))
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
