"""The Pallas LSTM kernels (interpret mode on the CPU) against the scan they replace.

Ragged lengths in both directions (the backward lanes read time-reversed sequences, padding first),
sizes that need padding to the kernels' tiles (B = 3, H = 4) and gradients through the custom VJP.
The scan itself is checked against numpy and PyTorch in test_heads.py and test_import_emb.py. The
last tests lower the kernels for a CUDA GPU (Triton) without one, which catches operations the GPU
backend cannot express.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import export

from tea_jax.model import bilstm, lstm_kernel
from tea_jax.model.bilstm import BiLSTM
from tea_jax.model.config import ModelConfig

# pylint: disable=protected-access


def lanes(stacked):
  """(L, K, ...) -> the K arrays (L, ...) that lstm_lanes and the scan take."""
  return tuple(stacked[:, k] for k in range(stacked.shape[1]))


def ragged_lanes(rng, steps=9, batch=3, hidden=4, lengths=(9, 5, 1)):
  """Gate inputs (L, K, B, 4H), masks (L, K, B, 1) and weights (K, H, 4H) of 4 lanes: forward,
  backward, forward, backward."""
  m_f = (np.arange(steps)[:, None] < np.asarray(lengths)[None]).astype(np.float32)[..., None]
  mask = np.stack([m_f, m_f[::-1], m_f, m_f[::-1]], axis=1)
  gates = rng.normal(size=(steps, 4, batch, 4 * hidden)).astype(np.float32)
  w_hh = (rng.normal(size=(4, hidden, 4 * hidden)) * 0.5).astype(np.float32)
  return gates, mask, w_hh


def test_forward_kernel_equals_scan_outputs_and_residuals(rng):
  gates, mask, w_hh = ragged_lanes(rng)
  out, saved = lstm_kernel.lstm_forward(gates, mask, w_hh, interpret=True)
  ref_out, ref_saved = bilstm._scan_forward(lanes(gates), lanes(mask), w_hh)
  np.testing.assert_allclose(out, np.stack(ref_out, axis=1), rtol=1e-6, atol=1e-6)
  for ours, ref in zip(saved, ref_saved):
    np.testing.assert_allclose(ours, ref, rtol=1e-6, atol=1e-6)
  # Padded steps are exactly zero in both directions (the reversed lanes have their padding first).
  valid = np.broadcast_to(mask, out.shape) > 0
  assert np.all(np.asarray(out)[~valid] == 0) and np.abs(np.asarray(out)[valid]).min() > 0


def test_backward_kernel_equals_scan_backward(rng):
  gates, mask, w_hh = ragged_lanes(rng)
  _, saved = bilstm._scan_forward(lanes(gates), lanes(mask), w_hh)
  d_out = rng.normal(size=gates.shape[:-1] + (w_hh.shape[1],)).astype(np.float32)
  ours = lstm_kernel.lstm_backward(d_out, mask, saved, w_hh, interpret=True)
  ref = np.stack(bilstm._scan_backward(lanes(d_out), lanes(mask), saved, w_hh), axis=1)
  np.testing.assert_allclose(ours, ref, rtol=1e-5, atol=1e-6)
  # No gradient reaches a padded step.
  assert np.all(np.asarray(ours)[np.broadcast_to(mask, ours.shape) == 0] == 0)


def test_lstm_lanes_gradients_equal_between_engines(rng):
  gates, mask, w_hh = ragged_lanes(rng)
  probe = rng.normal(size=gates.shape[:-1] + (w_hh.shape[1],)).astype(np.float32)

  def loss(engine, g, w):
    return jnp.sum(jnp.stack(bilstm.lstm_lanes(lanes(g), lanes(mask), w, engine), 1) * probe)

  grads = {e: jax.grad(loss, argnums=(1, 2))(e, gates, w_hh) for e in ("scan", "pallas")}
  for ours, ref in zip(grads["pallas"], grads["scan"]):
    np.testing.assert_allclose(ours, ref, rtol=1e-5, atol=1e-6)


def test_pallas_bilstm_equals_scan_bilstm_with_ragged_lengths(rng):
  lengths, steps, din, hidden = [7, 3, 1], 7, 5, 4
  x = rng.normal(size=(3, steps, din)).astype(np.float32)
  mask = (np.arange(steps)[None] < np.array(lengths)[:, None]).astype(np.float32)
  x[mask == 0] = 99.0  # padded rows must not leak into any valid output
  params = BiLSTM(hidden).init(jax.random.key(0), x, mask)["params"]
  probe = rng.normal(size=(3, steps, 2 * hidden)).astype(np.float32)

  def loss(params, x, implementation):
    out = BiLSTM(hidden, implementation).apply({"params": params}, x, mask)
    return jnp.sum(out * probe), out

  results = {impl: jax.value_and_grad(loss, argnums=(0, 1), has_aux=True)(params, x, impl)
             for impl in ("scan", "pallas")}
  (_, out_p), grads_p = results["pallas"]
  (_, out_s), grads_s = results["scan"]
  np.testing.assert_allclose(out_p, out_s, rtol=1e-6, atol=1e-6)
  assert np.all(np.asarray(out_p)[mask == 0] == 0)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6),
               grads_p, grads_s)
  assert np.all(np.asarray(grads_p[1])[mask == 0] == 0)


def test_padding_to_kernel_tiles_is_exact():
  # B = 3 -> 16 and H = 4 -> 16: the gate blocks are padded one by one and cropped back.
  x = np.arange(2 * 3 * 16, dtype=np.float32).reshape(2, 3, 16)  # (.., 4H) with H = 4
  padded = lstm_kernel._pad_gates(x, 4, 16)
  assert padded.shape == (2, 3, 64)
  np.testing.assert_array_equal(np.asarray(padded)[..., 16:20], x[..., 4:8])  # gate f
  assert np.all(np.asarray(padded)[..., 20:32] == 0)
  np.testing.assert_array_equal(lstm_kernel._unpad_gates(padded, 4, 16), x)
  assert [lstm_kernel._tile(n) for n in (1, 3, 16, 17, 128)] == [16, 16, 16, 32, 128]
  assert [lstm_kernel._batch_tiles(n) for n in (1, 16, 17, 20, 32, 33)] == [1, 1, 2, 2, 2, 3]


def test_auto_is_the_kernel_on_gpus_only(monkeypatch):
  assert bilstm.resolve_implementation("auto") == "scan"  # this machine: a CPU
  monkeypatch.setattr(jax, "default_backend", lambda: "gpu")
  assert bilstm.resolve_implementation("auto") == "pallas"
  assert bilstm.resolve_implementation("scan") == "scan"
  with pytest.raises(ValueError, match="config.model.lstm='fused': must be one of"):
    ModelConfig(lstm="fused")


def test_auto_falls_back_to_the_scan_where_the_kernels_do_not_compile(monkeypatch, caplog):
  # A "GPU" whose kernels cannot be compiled (here: Triton lowering on the CPU backend): "auto" must
  # train with the scan, after one warning, and give the scan's numbers; explicit "pallas" fails.
  monkeypatch.setattr(jax, "default_backend", lambda: "gpu")
  monkeypatch.setattr(lstm_kernel, "interpret_mode", lambda: False)
  lstm_kernel.compiles.cache_clear()
  rng = np.random.default_rng(3)
  hidden, batch, steps, din = 8, 3, 6, 5
  weights = {f"{d}_{k}": jnp.asarray(rng.normal(size=shape) * 0.3, jnp.float32)
             for d in ("forward", "backward")
             for k, shape in dict(w_ih=(din, 4 * hidden), w_hh=(hidden, 4 * hidden),
                                  b_ih=(4 * hidden,), b_hh=(4 * hidden,)).items()}
  x = jnp.asarray(rng.normal(size=(batch, steps, din)), jnp.float32)
  mask = jnp.asarray(np.arange(steps)[None] < np.array([6, 4, 1])[:, None], jnp.float32)
  try:
    with caplog.at_level("WARNING", logger=lstm_kernel.__name__):
      auto = bilstm.bilstms([weights], [x], mask, "auto")[0]
    assert "using the scan" in caplog.text and "L=6, B=3, H=8" in caplog.text
    scan = bilstm.bilstms([weights], [x], mask, "scan")[0]
    np.testing.assert_array_equal(np.asarray(auto), np.asarray(scan))
    with pytest.raises(Exception):
      jax.block_until_ready(bilstm.bilstms([weights], [x], mask, "pallas")[0])
  finally:
    lstm_kernel.compiles.cache_clear()


def test_kernel_precision_follows_the_matmul_precision_config():
  # tests/conftest.py asks for "highest": the kernels must multiply in full float32 then.
  assert not lstm_kernel._split_matmul()
  with jax.default_matmul_precision("tensorfloat32"):
    assert lstm_kernel._split_matmul()


def tf32(x):
  """x rounded to TF32 (10 stored mantissa bits, nearest with ties away), as float32."""
  bits = np.asarray(x, np.float32).view(np.uint32)
  return ((bits + np.uint32(0x1000)) & np.uint32(0xFFFFE000)).view(np.float32)


def test_split_product_is_closer_to_float32_than_tf32(rng):
  # The default precision's three bfloat16 products against float64: several times closer than
  # a TF32 matmul (operands rounded to 11 significant bits), unlike one bfloat16 product (8 bits).
  a = rng.normal(size=(16, 128)).astype(np.float32)
  b = rng.normal(size=(128, 64)).astype(np.float32)
  exact = a.astype(np.float64) @ b.astype(np.float64)
  error = lambda x: np.abs(np.asarray(x, np.float64) - exact).max() / np.abs(exact).max()
  tf32_error = error(tf32(a).astype(np.float64) @ tf32(b).astype(np.float64))
  ours = lstm_kernel._product(lstm_kernel._split(a), lstm_kernel._split(b))
  one_bf16 = jnp.dot(jnp.asarray(a, jnp.bfloat16), jnp.asarray(b, jnp.bfloat16),
                     preferred_element_type=jnp.float32)
  assert 0 < error(ours) < tf32_error / 8 and error(one_bf16) > tf32_error
  assert error(lstm_kernel._product((a,), (b,))) < 1e-6


def test_kernels_at_default_precision_follow_the_scan(rng):
  # Default precision (TF32 for XLA's matmuls on GPUs): the kernels take the split products,
  # which are not the scan's float32 matmuls bit for bit but close to them.
  gates, mask, w_hh = ragged_lanes(rng)
  d_out = rng.normal(size=gates.shape[:-1] + (w_hh.shape[1],)).astype(np.float32)
  ref_out, ref_saved = bilstm._scan_forward(lanes(gates), lanes(mask), w_hh)
  ref_dz = np.stack(bilstm._scan_backward(lanes(d_out), lanes(mask), ref_saved, w_hh), axis=1)
  with jax.default_matmul_precision("default"):
    out, saved = lstm_kernel.lstm_forward(gates, mask, w_hh, interpret=True)
    dz = lstm_kernel.lstm_backward(d_out, mask, ref_saved, w_hh, interpret=True)
  for ours, ref in ((out, np.stack(ref_out, axis=1)), (dz, ref_dz)):
    difference = np.abs(np.asarray(ours) - ref).max()
    assert 0 < difference < 1e-4 * np.abs(ref).max()


@pytest.mark.parametrize("batch,hidden", [(32, 128), (20, 100)])
def test_kernels_at_training_tiles_equal_scan(rng, batch, hidden):
  # Several programs per lane (tiles of 16 samples) and several blocks of hidden units per step,
  # as at the training shapes (H = 128); 20 samples and 100 units leave padded rows and units
  # inside the last tile and block.
  steps = 4
  lengths = np.resize([4, 1, 3, 2], batch)
  m_f = (np.arange(steps)[:, None] < lengths[None]).astype(np.float32)[..., None]
  mask = np.stack([m_f, m_f[::-1]], axis=1)
  gates = rng.normal(size=(steps, 2, batch, 4 * hidden)).astype(np.float32)
  w_hh = (rng.normal(size=(2, hidden, 4 * hidden)) / np.sqrt(hidden)).astype(np.float32)
  d_out = rng.normal(size=(steps, 2, batch, hidden)).astype(np.float32)
  out, saved = lstm_kernel.lstm_forward(gates, mask, w_hh, interpret=True)
  ref_out, ref_saved = bilstm._scan_forward(lanes(gates), lanes(mask), w_hh)
  np.testing.assert_allclose(out, np.stack(ref_out, axis=1), rtol=1e-5, atol=1e-6)
  for ours, ref in zip(saved, ref_saved):
    np.testing.assert_allclose(ours, ref, rtol=1e-5, atol=1e-6)
  dz = lstm_kernel.lstm_backward(d_out, mask, ref_saved, w_hh, interpret=True)
  ref_dz = np.stack(bilstm._scan_backward(lanes(d_out), lanes(mask), ref_saved, w_hh), axis=1)
  np.testing.assert_allclose(dz, ref_dz, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("steps,lanes,batch,hidden", [(128, 4, 16, 128), (9, 2, 3, 4)])
def test_kernels_lower_for_a_cuda_gpu(steps, lanes, batch, hidden):
  # Lowering to Triton runs in Python (no GPU needed); an operation the Triton backend of Pallas
  # cannot express fails here.
  gates = jax.ShapeDtypeStruct((steps, lanes, batch, 4 * hidden), jnp.float32)
  mask = jax.ShapeDtypeStruct((steps, lanes, batch, 1), jnp.float32)
  w_hh = jax.ShapeDtypeStruct((lanes, hidden, 4 * hidden), jnp.float32)

  def step(gates, mask, w_hh):
    out, saved = lstm_kernel.lstm_forward(gates, mask, w_hh, interpret=False)
    return out, lstm_kernel.lstm_backward(out, mask, saved, w_hh, interpret=False)

  checks = [export.DisabledSafetyCheck.custom_call("__gpu$xla.gpu.triton")]
  exported = export.export(jax.jit(step), platforms=["cuda"], disabled_checks=checks)(
      gates, mask, w_hh)
  text = exported.mlir_module()
  assert text.count("__gpu$xla.gpu.triton") == 2
  assert "lstm_forward" in text and "lstm_backward" in text
