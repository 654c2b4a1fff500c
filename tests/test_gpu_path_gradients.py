"""Per-parameter gradients of the training step's GPU configuration, simulated on the CPU, against
the CPU configuration's (docs/design.md sections 0, 8, 9).

After one AdamW step the updated parameters show only the gradients' signs (m / sqrt(v) is +-1 at
the first update) and one scalar, the global norm, carries their size; a gradient that is wrong in
size but not in sign passes such a check. Here the real jitted step (`train.make_train_step`) runs
with an optimizer that hands back the gradients it receives, so every parameter's gradient is
compared, element by element. JAX's backend is reported as "gpu" to the model code while the Pallas
LSTM kernels run interpreted, as in tests/test_kernels_gpu_path.py.
"""

from typing import Any, NamedTuple

import jax
import numpy as np
import optax
from conftest import gpu_path_config, random_batch

from tea_jax import inference, optim, train
from tea_jax.data.prefetch import to_device
from tea_jax.mesh import make_mesh
from tea_jax.model import lstm_kernel


class Captured(NamedTuple):
  """The real optimizer's state beside the gradients of its last update."""
  inner: Any
  grads: Any
  grad_norm: Any  # read by the step's statistics (optim.last_grad_norm)


def capturing(tx: optax.GradientTransformation) -> optax.GradientTransformation:
  """`tx`, whose state also keeps the gradients it was given."""

  def init(params):
    inner = tx.init(params)
    return Captured(inner, jax.tree.map(np.zeros_like, params), inner.grad_norm)

  def update(grads, state, params=None):
    updates, inner = tx.update(grads, state.inner, params)
    return updates, Captured(inner, grads, inner.grad_norm)

  return optax.GradientTransformation(init, update)


def gradients(config, batch):
  """(gradients, updated parameters, statistics, jaxpr text) of one training step."""
  mesh = make_mesh()
  tx = capturing(optim.make_optimizer(config, 10))
  variables = inference.init_variables(config, jax.random.key(0))
  state = {"opt_state": tx.init(variables["params"]), "step": np.zeros((), np.int32)}
  step = train.make_train_step(config, tx, mesh)
  device_batch = to_device(batch, mesh)
  text = str(step.trace(variables, state, device_batch, np.float32(0.5)).jaxpr)
  new_vars, new_state, stats = step(variables, state, device_batch, np.float32(0.5))
  return jax.device_get((new_state["opt_state"].grads, new_vars["params"], stats)) + (text,)


def named_leaves(tree):
  return {"/".join(str(k.key) for k in path): np.asarray(leaf)
          for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]}


def test_gpu_configuration_has_the_cpu_configurations_gradients(monkeypatch):
  config = gpu_path_config()
  batch = random_batch(np.random.default_rng(0), config.model, lengths=[12, 7], words=[4, 6])
  batch.update(start_label=np.array([2, 1], np.int32), end_label=np.array([9, 5], np.int32),
               duration=np.array([30.0, 20.0], np.float32), valid=np.ones(2, np.float32))
  cpu_grads, cpu_params, cpu_stats, cpu_text = gradients(config, batch)

  monkeypatch.setattr(jax, "default_backend", lambda: "gpu")
  monkeypatch.setattr(lstm_kernel, "interpret_mode", lambda: True)
  config.model.lstm = "auto"
  gpu_grads, gpu_params, gpu_stats, gpu_text = gradients(config, batch)

  # The paths differ: Pallas kernels instead of scans, the two frame branches vmapped together.
  assert "pallas_call" not in cpu_text and gpu_text.count("pallas_call") == 4
  cpu, gpu = named_leaves(cpu_grads), named_leaves(gpu_grads)
  assert set(cpu) == set(gpu) and len(cpu) > 300
  # Gradients that vanish analytically (attention key biases, the span heads' output biases: a
  # softmax ignores a shift of its logits) hold float noise on both sides; every other one must
  # agree element by element to float32 rounding of the two orders of summation.
  vanishing = ("attention/key/bias", "head/dense_out/bias")
  for name, want in cpu.items():
    scale = float(np.abs(want).max())
    error = float(np.abs(gpu[name] - want).max())
    if name.endswith(vanishing):
      assert scale < 1e-6 and error < 1e-6, (name, scale, error)
      continue
    assert scale > 1e-6, f"{name}: no gradient to compare"
    assert error <= 2e-5 * scale, f"{name}: error {error:.3g}, gradient scale {scale:.3g}"
  np.testing.assert_allclose(gpu_stats["grad_norm"], cpu_stats["grad_norm"], rtol=2e-5)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6),
               gpu_params, cpu_params)
