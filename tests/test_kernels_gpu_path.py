"""The GPU configuration of the training step, simulated on the CPU, against the CPU's.

On a GPU the step takes other paths than on the CPU: the Pallas LSTM kernels (model.lstm "auto"),
the video and paragraph branches vmapped together, the content guides' running max as a
reduce_window and the optimizer's global norm as one reduction. Here JAX's backend is reported as
"gpu" to the model code while the kernels run interpreted, and one full training step (losses,
backward, clipping, AdamW) must give what the CPU configuration gives, up to rounding.
"""

import jax
import numpy as np
from conftest import gpu_path_config, random_batch

from tea_jax import inference, optim, train
from tea_jax.data.prefetch import to_device
from tea_jax.mesh import make_mesh
from tea_jax.model import lstm_kernel


def one_step(config, batch):
  """(stats, new params, jaxpr text) of one training step from a fixed initialisation."""
  mesh = make_mesh()
  tx = optim.make_optimizer(config, 10)
  variables = inference.init_variables(config, jax.random.key(0))
  state = {"opt_state": tx.init(variables["params"]), "step": np.zeros((), np.int32)}
  step = train.make_train_step(config, tx, mesh)
  device_batch = to_device(batch, mesh)
  text = str(step.trace(variables, state, device_batch, np.float32(0.5)).jaxpr)
  new_vars, _, stats = step(variables, state, device_batch, np.float32(0.5))
  return jax.device_get(stats), jax.device_get(new_vars["params"]), text


def test_gpu_configuration_trains_like_the_cpu_configuration(monkeypatch):
  config = gpu_path_config()
  batch = random_batch(np.random.default_rng(0), config.model, lengths=[12, 7], words=[4, 6])
  batch.update(start_label=np.array([2, 1], np.int32), end_label=np.array([9, 5], np.int32),
               duration=np.array([30.0, 20.0], np.float32), valid=np.ones(2, np.float32))
  cpu_stats, cpu_params, cpu_text = one_step(config, batch)

  monkeypatch.setattr(jax, "default_backend", lambda: "gpu")
  monkeypatch.setattr(lstm_kernel, "interpret_mode", lambda: True)
  config.model.lstm = "auto"
  gpu_stats, gpu_params, gpu_text = one_step(config, batch)

  # The paths really differ: kernels instead of scans, a reduce_window instead of cummax's
  # associative scan.
  assert "pallas_call" not in cpu_text and "reduce_window_max" not in cpu_text
  assert gpu_text.count("pallas_call") == 4  # forward and backward of the start and end encoders
  assert "reduce_window_max" in gpu_text
  for key in ("loss", "vmr", "highlight", "rank", "grad_norm"):
    np.testing.assert_allclose(gpu_stats[key], cpu_stats[key], rtol=2e-5, err_msg=key)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6),
               gpu_params, cpu_params)
