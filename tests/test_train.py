"""The training loop: sharding over devices, resume, divergence, evaluation outputs."""

import json
import os
import shutil
import subprocess
import sys
from typing import NamedTuple

import jax
import numpy as np
import optax
import pytest
from conftest import REPO, tiny_train_config

from tea_jax import checkpointing, evaluate, train
from tea_jax.data.prefetch import prefetch_to_device
from tea_jax.errors import CheckpointError
from tea_jax.mesh import make_mesh


def final_params(workdir):
  with checkpointing.manager(workdir, read_only=True) as mngr:
    restored = checkpointing.restore(mngr, mngr.latest_step())
  return jax.tree_util.tree_leaves(restored["variables"])


class OlderAdamWState(NamedTuple):
  """The optimizer state of tea_jax before its moments were flat: per-parameter trees."""
  count: jax.Array
  mu: dict
  nu: dict


def write_older_optimizer_layout(workdir, step):
  """Rewrites checkpoint `step` with its optimizer state in the older layout (clipping's empty
  state, then AdamW's count and moment trees), moments unflattened by hand with numpy."""
  with checkpointing.manager(str(workdir)) as mngr:
    metadata = mngr.item_metadata(step)["train_state"]
    items = checkpointing.restore(mngr, step, train_state_like=getattr(metadata, "tree", metadata))
    params = items["variables"]["params"]
    adam = items["train_state"]["opt_state"]
    leaves, treedef = jax.tree_util.tree_flatten(params)
    sizes = np.cumsum([0] + [int(np.prod(x.shape)) for x in leaves])
    tree = lambda flat: jax.tree_util.tree_unflatten(treedef, [
        np.asarray(flat)[a:b].reshape(x.shape) for a, b, x in zip(sizes[:-1], sizes[1:], leaves)])
    assert sizes[-1] == np.asarray(adam["mu"]).size
    older = {"opt_state": (optax.EmptyState(), OlderAdamWState(
        np.asarray(adam["count"]), tree(adam["mu"]), tree(adam["nu"]))),
             "step": items["train_state"]["step"]}
    mngr.delete(step)
    checkpointing.save(mngr, step, items["variables"], older)


def test_resume_after_interruption_is_bit_identical(train_data_root, tmp_path, caplog):
  root = train_data_root
  straight = tmp_path / "straight"
  result = train.train_and_evaluate(tiny_train_config(root), str(straight), progress=False)
  total = result["step"]
  interrupted = tmp_path / "interrupted"
  partial = train.train_and_evaluate(tiny_train_config(root, max_steps=3), str(interrupted),
                                     progress=False)
  assert partial["step"] == 3 and "metrics" not in partial
  older = tmp_path / "older"
  shutil.copytree(interrupted, older)
  write_older_optimizer_layout(older, 3)
  with caplog.at_level("WARNING", logger="tea_jax"):
    resumed = train.train_and_evaluate(tiny_train_config(root), str(interrupted), progress=False)
  assert "cannot be read" not in caplog.text  # nothing set aside
  assert resumed["step"] == total
  for a, b in zip(final_params(str(straight)), final_params(str(interrupted)), strict=True):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
  # A checkpoint whose optimizer state has the per-parameter layout of an older tea_jax is refused
  # in one line (retrain), not set aside as damaged.
  with pytest.raises(CheckpointError, match="written by an older tea_jax.*train into a new"):
    train.train_and_evaluate(tiny_train_config(root), str(older), progress=False)
  assert not (older / checkpointing.DAMAGED_DIR).exists()
  # Outputs of a finished run.
  metrics = json.loads((straight / "metrics.json").read_text())
  assert set(metrics["splits"]) == {"test"} and "selection" in metrics
  preds = (straight / "predictions_test.jsonl").read_text().splitlines()
  assert len(preds) == metrics["splits"]["test"]["count"]
  first = json.loads(preds[0])
  assert {"video_id", "query", "pred_start", "pred_end", "true_start", "true_end", "score",
          "iou"} <= set(first)
  # The best checkpoint is the kept one with the highest selection value (val's r1_sum_miou).
  with checkpointing.manager(str(straight), read_only=True) as mngr:
    kept = {s: mngr.metrics(s) for s in mngr.all_steps()}
  evaluated = {s: m for s, m in kept.items() if m is not None}
  assert metrics["step"] in evaluated and total in kept
  best = evaluated[metrics["step"]]["splits"]["val"]["r1_sum_miou"]
  assert all(best >= m["splits"]["val"]["r1_sum_miou"] for m in evaluated.values())
  assert metrics["protocol"] == "val" and metrics["splits"]["test"]["step"] == metrics["step"]
  # Evaluation from the checkpoint alone reproduces the final metrics.
  again = evaluate.evaluate_checkpoint(tiny_train_config(root), str(straight), progress=False)
  assert again["test"] == metrics["splits"]["test"]


def test_nan_loss_stops_with_a_clear_error(train_data_root, tmp_path):
  config = tiny_train_config(train_data_root)
  config.optimizer.learning_rate = 1e30  # the first update overflows the parameters
  with pytest.raises(train.TrainingDiverged, match="no checkpoint was written"):
    train.train_and_evaluate(config, str(tmp_path / "nan"), progress=False)
  with checkpointing.manager(str(tmp_path / "nan"), read_only=True) as mngr:
    assert not mngr.all_steps()


def test_prefetch_to_device_keeps_order_raises_reader_errors_and_stops():
  mesh = make_mesh()
  host = [{"valid": np.full(2, k, np.float32), "query": np.array(["a", "b"])} for k in range(5)]
  got = list(prefetch_to_device(iter(host), mesh))
  assert [float(b["valid"][0]) for b in got] == [0, 1, 2, 3, 4]
  assert isinstance(got[0]["valid"], jax.Array) and "query" not in got[0]

  def broken():
    yield host[0]
    raise OSError("shard-00003 is truncated")

  with pytest.raises(OSError, match="shard-00003"):
    list(prefetch_to_device(broken(), mesh))

  pulled = []

  def endless():
    while True:
      pulled.append(len(pulled))
      yield host[0]

  prefetched = prefetch_to_device(endless(), mesh, size=2)
  next(prefetched)
  assert len(pulled) == 3  # the batch handed out and two copied ahead
  prefetched.close()
  assert len(pulled) == 3  # closed: nothing more is read


def test_the_step_and_its_benchmarks_import_without_tensorflow_or_pyav():
  # The GPU image has JAX, flax, optax, orbax, torch and transformers but no TensorFlow,
  # tensorflow-datasets or PyAV: the jitted step and the GPU benchmarks must not need them.
  code = ("import sys; import tea_jax.train, tea_jax.inference, bench.train_step, "
          "bench.model_step, bench.narrate; "
          "print(sorted(m for m in ('tensorflow', 'tensorflow_datasets', 'av', 'nltk') "
          "if m in sys.modules))")
  proc = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True,
                        check=False, env=dict(os.environ, PYTHONPATH=str(REPO)))
  assert proc.returncode == 0, proc.stderr[-2000:]
  assert proc.stdout.strip().splitlines()[-1] == "[]"
