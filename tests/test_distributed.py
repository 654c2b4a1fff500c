"""Training on several devices and several processes gives what one device gives (separate from
tests/test_train.py so that a parallel test run can take the two files on two workers)."""

import json
import os
import subprocess
import sys

import jax
import numpy as np
from conftest import REPO

from tea_jax import checkpointing

STEPS_SCRIPT = """
import json, sys
import jax, numpy as np
from configs import demo
from tea_jax import config_checks, optim, train
from tea_jax.data.input_pipeline import Records
from tea_jax.data.prefetch import to_device
from tea_jax.mesh import make_mesh
from tea_jax.data.schema import records_dir
config = demo.get_config(); config.unlock()
config.data.root = sys.argv[1]
config.model.update(hidden=16, num_heads=2, merge="none", paragraph_branch=False)
config.batch_size = 8
records = Records(records_dir(config.data), config.data)
config = train.with_data_sizes(config, records)
mesh = make_mesh()
tx = optim.make_optimizer(config, 10)
variables, state = train.init_state(config, records, tx, jax.random.key(0))
variables, state = jax.device_put((variables, state), jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec()))
step = train.make_train_step(config, tx, mesh)
batches = records.train_batches("train", 8, 0)
losses = []
for _ in range(2):
  variables, state, stats = step(variables, state, to_device(next(batches), mesh), np.float32(0.9))
  losses.append(float(stats["loss"]))
try:
  config.batch_size = 3
  config_checks.check_experiment(config)
  error = None
except ValueError as e:
  error = str(e)
print(json.dumps({"devices": jax.device_count(), "losses": losses, "error": error}))
"""


def run_steps(train_data_root, devices):
  env = dict(os.environ, XLA_FLAGS=f"--xla_force_host_platform_device_count={devices}",
             PYTHONPATH=str(REPO))
  proc = subprocess.run([sys.executable, "-c", STEPS_SCRIPT, str(train_data_root)], cwd=REPO,
                        env=env, capture_output=True, text=True, check=False)
  assert proc.returncode == 0, proc.stderr[-3000:]
  return json.loads(proc.stdout.strip().splitlines()[-1])


def test_two_devices_give_the_same_losses_as_one(train_data_root):
  one, two = run_steps(train_data_root, 1), run_steps(train_data_root, 2)
  assert one["devices"] == 1 and two["devices"] == 2
  np.testing.assert_allclose(two["losses"], one["losses"], rtol=2e-5)
  assert one["error"] is None
  assert "must be a multiple of the 2 devices" in two["error"]


TRAIN_SCRIPT = """
import json, sys
root, workdir, processes, index, port = sys.argv[1], sys.argv[2], *map(int, sys.argv[3:])
import jax
from configs import demo
from tea_jax import train
config = demo.get_config(); config.unlock()
config.data.root = root
config.model.update(hidden=16, num_heads=2, merge="none", paragraph_branch=False)
config.update(batch_size=8, eval_batch_size=8, num_epochs=1, log_every_steps=1)
config.data.eval_splits = ("test",)
if processes > 1:
  config.update(distributed=True, coordinator_address=f"localhost:{port}",
                num_processes=processes, process_id=index)
result = train.train_and_evaluate(config, workdir, progress=False)
print(json.dumps({"step": result["step"], "processes": jax.process_count()}))
"""


def free_port() -> int:
  import socket  # pylint: disable=import-outside-toplevel
  with socket.socket() as s:
    s.bind(("localhost", 0))
    return s.getsockname()[1]


def test_two_processes_train_exactly_like_one(train_data_root, tmp_path):
  # Two hosts in miniature: two processes joined by jax.distributed (Gloo on CPU), each reading its
  # half of every global batch, writing one Orbax checkpoint together, evaluating together.
  env = dict(os.environ, PYTHONPATH=str(REPO))
  port = free_port()

  def launch(workdir, processes, index):
    return subprocess.Popen([sys.executable, "-c", TRAIN_SCRIPT, str(train_data_root), str(workdir),
                             str(processes), str(index), str(port)], cwd=REPO, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)

  pair = [launch(tmp_path / "two", 2, i) for i in range(2)]
  outputs = [p.communicate(timeout=600) for p in pair]
  for p, (_, err) in zip(pair, outputs):
    assert p.returncode == 0, err[-3000:]
  assert json.loads(outputs[0][0].strip().splitlines()[-1])["processes"] == 2
  single = launch(tmp_path / "one", 1, 0)
  out, err = single.communicate(timeout=600)
  assert single.returncode == 0, err[-3000:]

  one = json.loads((tmp_path / "one" / "metrics.json").read_text())
  two = json.loads((tmp_path / "two" / "metrics.json").read_text())
  assert one == two
  params_one, step_one = checkpointing.restore_variables(str(tmp_path / "one"))
  params_two, step_two = checkpointing.restore_variables(str(tmp_path / "two"))
  assert step_one == step_two > 0
  # Gradients are summed across processes in another order: float rounding only.
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6),
               params_one, params_two)
