"""A run killed (SIGKILL) while Orbax deletes an old checkpoint, after the save that rotated it out,
then the same command again: the same final result as a run that never stopped (docs/design.md
section 18, "crash safety by construction").

The kill is real: the training subprocess removes some of the files of the checkpoint being
deleted, as the deletion would, and kills itself before the deletion ends, leaving a half-deleted
checkpoint folder behind.
"""

import os
import re
import signal
import subprocess
import sys

import pytest
from conftest import REPO, assert_same_outcome, run_outcome

from tea_jax import checkpointing

# Two checkpoints kept plus the best: with five epochs a save before the last one rotates an
# earlier checkpoint out, whichever epoch is the best.
EPOCHS = 5

# Trains tiny_train_config(argv[1], num_epochs=argv[3]) into argv[2]. With argv[4] = N, the first
# deletion of a checkpoint folder (checkpoints/<step>) made while checkpoints/N exists (any, for
# N = 0) removes the first half of the folder's files (sorted paths), then kills the process;
# whether Orbax deletes with shutil.rmtree or unlinks the files itself first.
RUN = """
import os, shutil, signal, sys
root, workdir, epochs = sys.argv[1], sys.argv[2], int(sys.argv[3])
kill_after = int(sys.argv[4]) if len(sys.argv) > 4 else None

def step_folder(path):
  parts = os.path.abspath(os.fspath(path)).split(os.sep)
  if "checkpoints" not in parts[:-1]:
    return None
  at = len(parts) - 1 - parts[::-1].index("checkpoints")
  if at + 1 < len(parts) and parts[at + 1].isdigit():
    return os.sep.join(parts[:at + 2])
  return None

def due(folder):
  if kill_after is None or folder is None:
    return False
  return kill_after == 0 or os.path.isdir(os.path.join(os.path.dirname(folder), str(kill_after)))

def cut_short_and_die(folder):
  files = sorted(os.path.join(d, f) for d, _, names in os.walk(folder) for f in names)
  for path in files[:len(files) // 2]:
    real_unlink(path)
  sys.stderr.write(f"killed while deleting {folder}\\n")
  sys.stderr.flush()
  os.kill(os.getpid(), signal.SIGKILL)

real_rmtree, real_unlink = shutil.rmtree, os.unlink

def rmtree(path, *args, **kwargs):
  folder = step_folder(path)
  if due(folder) and os.path.abspath(os.fspath(path)) == folder:
    cut_short_and_die(folder)
  return real_rmtree(path, *args, **kwargs)

def unlink(path, *args, **kwargs):
  folder = None if kwargs.get("dir_fd") is not None else step_folder(path)
  if due(folder):
    cut_short_and_die(folder)
  return real_unlink(path, *args, **kwargs)

shutil.rmtree, os.unlink = rmtree, unlink
import logging
logging.getLogger("tea_jax").setLevel(logging.INFO)
logging.getLogger("tea_jax").addHandler(logging.StreamHandler())  # "resumed from step N"
from conftest import tiny_train_config
from tea_jax import train
result = train.train_and_evaluate(tiny_train_config(root, num_epochs=epochs), workdir,
                                  progress=False)
print("steps", result["step"])
"""


def run(root, workdir, env, kill_after=None):
  args = [sys.executable, "-c", RUN, str(root), str(workdir), str(EPOCHS)]
  args += [] if kill_after is None else [str(kill_after)]
  return subprocess.run(args, cwd=REPO, env=env, capture_output=True, text=True, check=False,
                        timeout=900)


def saved_steps(workdir) -> list[int]:
  return sorted(int(p.name) for p in (workdir / "checkpoints").iterdir() if p.name.isdigit())


@pytest.fixture(scope="module")
def straight(train_data_root, env, tmp_path_factory):
  """(workdir, total steps, outcome) of a run that is never interrupted."""
  workdir = tmp_path_factory.mktemp("rotation") / "straight"
  proc = run(train_data_root, workdir, env)
  assert proc.returncode == 0, proc.stderr[-3000:]
  total = int(proc.stdout.split("steps")[-1])
  assert len(saved_steps(workdir)) < EPOCHS  # it did rotate checkpoints out
  return workdir, total, run_outcome(workdir)


def killed_while_deleting(root, workdir, env, kill_after) -> int:
  """Runs until a checkpoint deletion is cut short by SIGKILL; returns the step being deleted."""
  proc = run(root, workdir, env, kill_after)
  assert proc.returncode == -signal.SIGKILL, proc.stderr[-3000:]
  folder = proc.stderr.split("killed while deleting ")[-1].split()[0]
  left = [p for p in (workdir / "checkpoints" / os.path.basename(folder)).rglob("*")
          if p.is_file()]
  assert left  # a checkpoint folder cut short is on disk
  assert not (workdir / "metrics.json").exists()
  return int(os.path.basename(folder))


def rerun(root, workdir, env, total) -> int:
  """The same command again, to the end; returns the step it resumed from."""
  proc = run(root, workdir, env)
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert int(proc.stdout.split("steps")[-1]) == total
  resumed = set(re.findall(r"resumed from step (\d+)", proc.stderr))  # (one line per handler)
  assert len(resumed) == 1, proc.stderr[-3000:]
  return int(resumed.pop())


def test_a_kill_while_a_save_rotates_a_checkpoint_out_gives_the_uninterrupted_result(
    train_data_root, env, straight, tmp_path):
  workdir, total, want = straight
  killed = tmp_path / "killed"
  deleted = killed_while_deleting(train_data_root, killed, env, kill_after=0)
  latest = max(saved_steps(killed))  # the save that rotated `deleted` out
  assert 0 < deleted < latest < total
  assert rerun(train_data_root, killed, env, total) == latest
  assert_same_outcome(run_outcome(killed), want)
  # The later saves' rotation removes the half-deleted checkpoint: the straight run's folders.
  assert saved_steps(killed) == saved_steps(workdir)


@pytest.fixture(scope="module")
def killed_at_the_last_save(train_data_root, env, straight, tmp_path_factory):
  """A run killed while its last save rotates a checkpoint out, then run again: (workdir, the
  step being deleted)."""
  _, total, _ = straight
  killed = tmp_path_factory.mktemp("rotation") / "killed_last"
  deleted = killed_while_deleting(train_data_root, killed, env, kill_after=total)
  assert rerun(train_data_root, killed, env, total) == total  # nothing left to train
  return killed, deleted


def test_a_kill_while_the_last_save_rotates_a_checkpoint_out_gives_the_same_result(
    straight, killed_at_the_last_save):
  assert_same_outcome(run_outcome(killed_at_the_last_save[0]), straight[2])


def test_no_half_deleted_checkpoint_is_left_after_the_rerun(straight, killed_at_the_last_save):
  killed, deleted = killed_at_the_last_save
  with checkpointing.manager(str(killed), read_only=True) as mngr:
    steps = sorted(mngr.all_steps())
  assert deleted not in steps, f"checkpoints/{deleted} is listed after the rerun"
  assert saved_steps(killed) == saved_steps(straight[0])
