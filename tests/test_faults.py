"""Fault injection: what survives what (README, "What survives what").

Kills are real (SIGKILL of a training subprocess right after one of its durable writes); damaged
files are real files cut short; bad configs go through the real command line. Each class of fault
ends in the same result as no fault at all, or in one clear line naming the field or file.
"""

import json
import os
import signal
import subprocess
import sys

import pytest
from conftest import REPO, assert_same_outcome, run_outcome, tiny_train_config

from data_prep import synthetic
from data_prep.build_records import build_records
from tea_jax import checkpointing, cli, evaluate, train
from tea_jax.data.input_pipeline import Records
from tea_jax.data.schema import records_dir
from tea_jax.errors import CheckpointError, InputError, UserError
from tea_jax.workdir import locked

# Trains the tiny config below into argv[2]; with argv[3] it kills itself (SIGKILL, no clean-up)
# right after the first durable write (an os.replace / os.rename: how files.atomic_write and Orbax
# commit) whose target ends with argv[3].
RUN = """
import os, signal, sys
root, workdir, kill_after = sys.argv[1], sys.argv[2], (sys.argv[3:] or [None])[0]
for name in ("replace", "rename"):
  def commit(src, dst, *args, _original=getattr(os, name), **kwargs):
    result = _original(src, dst, *args, **kwargs)
    if kill_after and os.fspath(dst).endswith(kill_after):
      os.kill(os.getpid(), signal.SIGKILL)
    return result
  setattr(os, name, commit)
from test_faults import tiny_config
from tea_jax import train
train.train_and_evaluate(tiny_config(root), workdir, progress=False)
"""


def tiny_config(root, **overrides):
  """Three epochs, so that a checkpoint save deletes an older one (two kept plus the best)."""
  return tiny_train_config(root, **{"num_epochs": 3, **overrides})


@pytest.fixture(scope="module")
def data_root(tmp_path_factory):
  root = tmp_path_factory.mktemp("fault_data")
  synthetic.generate(str(root), videos=16, seed=4, video_dim=256, word_dim=50)
  build_records(tiny_config(root), progress=False)
  return root


@pytest.fixture(scope="module")
def epoch(data_root) -> int:
  """Steps per epoch of the tiny config on the fault data."""
  config = tiny_config(data_root)
  pairs = Records(records_dir(config.data), config.data).size("train")
  return -(-pairs // config.batch_size)


def run(data_root, workdir, env, kill_after=None):
  args = [sys.executable, "-c", RUN, str(data_root), str(workdir)] + ([kill_after] if kill_after
                                                                       else [])
  return subprocess.run(args, cwd=REPO, env=env, capture_output=True, text=True, check=False,
                        timeout=900)


def kill_points(steps_per_epoch: int) -> list[str]:
  """One kill after each kind of durable write, in the order a run makes them: the run's files, a
  checkpoint's items half committed, a checkpoint complete, a checkpoint whose save deletes an
  older one (three epochs, two kept plus the best), the final evaluation half written, and a
  finished run."""
  s = steps_per_epoch
  return ["vocab.json", f"{s}.orbax-checkpoint-tmp/train_state", f"checkpoints/{s}",
          f"{2 * s}.orbax-checkpoint-tmp/metrics", f"checkpoints/{3 * s}",
          "predictions_test.jsonl", "metrics.json"]


def test_a_kill_after_any_durable_write_gives_the_uninterrupted_result(data_root, env, epoch,
                                                                       tmp_path):
  straight = run(data_root, tmp_path / "straight", env)
  assert straight.returncode == 0, straight.stderr[-3000:]
  workdir = tmp_path / "killed"
  for kill_after in kill_points(epoch):
    proc = run(data_root, workdir, env, kill_after)
    assert proc.returncode == -signal.SIGKILL, (kill_after, proc.stderr[-3000:])
  final = run(data_root, workdir, env)
  assert final.returncode == 0, final.stderr[-3000:]
  assert_same_outcome(run_outcome(workdir), run_outcome(tmp_path / "straight"))


def test_a_damaged_checkpoint_is_set_aside_and_training_resumes_from_the_previous_one(
    data_root, epoch, tmp_path):
  straight = tmp_path / "straight"
  train.train_and_evaluate(tiny_config(data_root), str(straight), progress=False)
  workdir = tmp_path / "damaged"
  train.train_and_evaluate(tiny_config(data_root, max_steps=2 * epoch), str(workdir),
                           progress=False)
  for path in (workdir / "checkpoints" / str(2 * epoch) / "train_state").rglob("*"):
    if path.is_file() and path.stat().st_size > 100:
      path.write_bytes(path.read_bytes()[:50])  # cut short, as a full disk or a kill would
  result = train.train_and_evaluate(tiny_config(data_root), str(workdir), progress=False)
  assert result["step"] == 3 * epoch
  damaged = [p.name.split("-")[0] for p in (workdir / checkpointing.DAMAGED_DIR).iterdir()]
  assert damaged == [str(2 * epoch)]
  assert_same_outcome(run_outcome(workdir), run_outcome(straight))


def test_evaluating_a_damaged_checkpoint_is_one_line(data_root, tmp_path):
  workdir = tmp_path / "run"
  result = train.train_and_evaluate(tiny_config(data_root), str(workdir), progress=False)
  for path in (workdir / "checkpoints" / str(result["best"]) / "variables").rglob("*"):
    if path.is_file() and path.stat().st_size > 100:
      path.write_bytes(b"\0" * 10)
  with pytest.raises(CheckpointError, match=f"checkpoints/{result['best']} cannot be read.*"
                                            f"--step N"):
    evaluate.evaluate_checkpoint(tiny_config(data_root), str(workdir), progress=False)
  # The command: that one line, exit status 2, and nothing after it (Orbax's abandoned reads of
  # the other arrays used to print their tracebacks on the way out).
  proc = subprocess.run(
      [sys.executable, "-m", "tea_jax.main", "--config", "configs/demo.py", "--workdir",
       str(workdir), "--mode", "eval", f"--config.data.root={data_root}",
       "--config.eval_batch_size=8", "--config.data.eval_splits=('test',)"],
      cwd=REPO, capture_output=True, text=True, check=False, timeout=600)
  lines = [line for line in proc.stderr.splitlines() if line.strip()]
  assert proc.returncode == 2, proc.stderr[-3000:]
  assert lines[-1].startswith(f"error: checkpoint {workdir}/checkpoints/{result['best']} cannot")
  assert sum(line.startswith("error:") for line in lines) == 1
  assert "Traceback" not in proc.stderr and "Exception ignored" not in proc.stderr
  assert "See full TensorStore details" not in lines[-1]


def test_a_damaged_checkpoint_metadata_file_is_one_line_and_set_aside_on_resume(data_root,
                                                                               tmp_path):
  # Orbax reads every checkpoint's small JSON files when it opens the folder: a cut one must not
  # end in its traceback.
  workdir = tmp_path / "run"
  train.train_and_evaluate(tiny_config(data_root), str(workdir), progress=False)
  latest = max(int(p.name) for p in (workdir / "checkpoints").iterdir() if p.name.isdigit())
  metadata = workdir / "checkpoints" / str(latest) / "_CHECKPOINT_METADATA"
  metadata.write_text(metadata.read_text()[:20])
  with pytest.raises(CheckpointError, match=f"checkpoints/{latest} is damaged "
                                            r"\(_CHECKPOINT_METADATA: JSONDecodeError"):
    evaluate.evaluate_checkpoint(tiny_config(data_root), str(workdir), progress=False)
  result = train.train_and_evaluate(tiny_config(data_root), str(workdir), progress=False)
  assert result["step"] == latest
  damaged = [p.name.split("-")[0] for p in (workdir / checkpointing.DAMAGED_DIR).iterdir()]
  assert damaged == [str(latest)]


def test_a_truncated_record_file_names_the_file(data_root, tmp_path):
  records = Records(records_dir(tiny_config(data_root).data),
                    tiny_config(data_root).data)
  shard = os.path.join(records.records_dir, records.meta["splits"]["train"]["shards"][0])
  copy = tmp_path / "records"
  copy.mkdir()
  for name in os.listdir(records.records_dir):
    data = open(os.path.join(records.records_dir, name), "rb").read()
    cut = name == os.path.basename(shard)
    (copy / name).write_bytes(data[:len(data) // 2] if cut else data)
  damaged = Records(str(copy), tiny_config(data_root).data)
  with pytest.raises(InputError, match=f"{os.path.basename(shard)}: corrupt or truncated record.*"
                                       f"rebuild the records"):
    for _ in damaged.train_batches("train", 8, seed=0, num_epochs=1):
      pass


def test_a_second_run_into_a_busy_workdir_is_refused_and_a_stale_lock_taken_over(
    data_root, epoch, tmp_path, caplog):
  workdir = tmp_path / "busy"
  with locked(str(workdir), "training"):
    with pytest.raises(CheckpointError, match="is in use by another run.*training of pid"):
      train.train_and_evaluate(tiny_config(data_root), str(workdir), progress=False)
  # A run killed while holding the lock leaves the file (and its holder) but not the lock.
  (workdir / ".lock").write_text(json.dumps({"pid": 999999, "host": "gone", "what": "training",
                                             "since": "yesterday"}))
  result = train.train_and_evaluate(tiny_config(data_root, num_epochs=1), str(workdir),
                                    progress=False)
  assert result["step"] == epoch
  assert "taking over the lock of a run that ended without releasing it" in caplog.text


@pytest.mark.parametrize("override,field,allowed", [
    ("--config.batch_size=0", "config.batch_size=0", "an integer in"),
    ("--config.batch_size=-4", "config.batch_size=-4", "an integer in"),
    ("--config.data.pooling=median", "config.data.pooling='median'", "one of ('mean', 'max')"),
    ("--config.optimizer.learning_rate=nan", "config.optimizer.learning_rate=nan",
     "a finite number"),
    ("--config.data.eval_splits=('val','nope')", "config.data.eval_splits=", "splits among"),
    ("--config.model.dropout=1.5", "config.model.dropout=1.5", "[0, 1)"),
])
def test_a_bad_config_is_one_line_naming_the_field(tmp_path, override, field, allowed):
  proc = subprocess.run([sys.executable, "-m", "tea_jax.main", "--config", "configs/demo.py",
                         override, "--workdir", str(tmp_path / "w")], cwd=REPO,
                        capture_output=True, text=True, check=False, timeout=300)
  assert proc.returncode == 2
  errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
  assert len(errors) == 1 and field in errors[0] and allowed in errors[0], proc.stderr[-2000:]
  assert "Traceback" not in proc.stderr
  assert not (tmp_path / "w" / "checkpoints").exists()


def test_divergence_names_a_checkpoint_that_exists(data_root, epoch, tmp_path):
  workdir = tmp_path / "nan"
  train.train_and_evaluate(tiny_config(data_root, max_steps=epoch), str(workdir), progress=False)
  config = tiny_config(data_root)
  config.optimizer.learning_rate = 1e30  # the first update overflows the parameters
  with pytest.raises(train.TrainingDiverged, match=rf"last checkpoint \(step {epoch}\) is kept"):
    train.train_and_evaluate(config, str(workdir), progress=False)


def test_expected_errors_are_one_line_and_bugs_keep_their_traceback(capsys):
  def bad_input():
    raise InputError("features/X.npy: 3 rows, feature_shapes.json says 4")

  with pytest.raises(SystemExit) as exit_info:
    cli.run_reporting(bad_input)
  assert exit_info.value.code == 2
  assert capsys.readouterr().err == "error: features/X.npy: 3 rows, feature_shapes.json says 4\n"

  def bug():
    return {}["missing"]

  with pytest.raises(KeyError):
    cli.run_reporting(bug)
  assert "unexpected error (a bug, not a bad input)" in capsys.readouterr().err
  assert issubclass(train.TrainingDiverged, UserError)
