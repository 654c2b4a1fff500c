"""Every Orbax call of tea_jax lives here, plus the small JSON files beside the checkpoints.

Layout of a workdir:
  config.json            the experiment config (ml_collections, as a dict)
  vocab.json             the vocabulary the embedding table implies
  checkpoints/<step>/    Orbax checkpoints; item `variables` = {"params", "frozen"}
"""

import json
import os
import tempfile
from typing import Any

import ml_collections
import orbax.checkpoint as ocp

CHECKPOINT_DIR = "checkpoints"
VARIABLES = "variables"


def write_json(path: str, obj: Any) -> None:
  """Writes JSON atomically (temp file in the same folder, then rename)."""
  folder = os.path.dirname(os.path.abspath(path))
  os.makedirs(folder, exist_ok=True)
  fd, tmp = tempfile.mkstemp(dir=folder, prefix=".tmp-", suffix=".json")
  try:
    with os.fdopen(fd, "w", encoding="utf-8") as f:
      json.dump(obj, f, indent=1, sort_keys=True)
      f.flush()
      os.fsync(f.fileno())
    os.replace(tmp, path)
  except BaseException:
    if os.path.exists(tmp):
      os.unlink(tmp)
    raise


def read_config(workdir: str) -> ml_collections.ConfigDict:
  """The experiment config saved in `workdir/config.json`."""
  path = os.path.join(workdir, "config.json")
  if not os.path.isfile(path):
    raise FileNotFoundError(f"no config.json in workdir {workdir!r}: not a tea_jax workdir")
  with open(path, encoding="utf-8") as f:
    return ml_collections.ConfigDict(json.load(f))


def manager(workdir: str, *, max_to_keep: int | None = None,
            read_only: bool = False) -> ocp.CheckpointManager:
  """A CheckpointManager over `workdir/checkpoints` with the `variables` item."""
  directory = os.path.join(os.path.abspath(workdir), CHECKPOINT_DIR)
  options = ocp.CheckpointManagerOptions(max_to_keep=max_to_keep, create=not read_only,
                                         read_only=read_only, enable_async_checkpointing=False)
  return ocp.CheckpointManager(directory, options=options, item_names=(VARIABLES,))


def save_variables(workdir: str, variables: Any, step: int = 0) -> str:
  """Saves flax variables as checkpoint `step`; returns its directory."""
  with manager(workdir) as mngr:
    mngr.save(step, args=ocp.args.Composite(**{VARIABLES: ocp.args.StandardSave(variables)}),
              force=True)
    mngr.wait_until_finished()
    return os.path.join(str(mngr.directory), str(step))


def restore_variables(workdir: str, step: int | None = None) -> tuple[Any, int]:
  """Restores the variables of checkpoint `step` (default: the latest) as numpy arrays."""
  if not os.path.isdir(os.path.join(workdir, CHECKPOINT_DIR)):
    raise FileNotFoundError(f"no {CHECKPOINT_DIR}/ in workdir {workdir!r}")
  with manager(workdir, read_only=True) as mngr:
    steps = mngr.all_steps()
    if not steps:
      raise FileNotFoundError(f"no checkpoint in {workdir}/{CHECKPOINT_DIR}")
    step = mngr.latest_step() if step is None else step
    if step not in steps:
      raise FileNotFoundError(f"no checkpoint of step {step} in {workdir}; it has {sorted(steps)}")
    restored = mngr.restore(step, args=ocp.args.Composite(**{VARIABLES: ocp.args.StandardRestore()}))
  return restored[VARIABLES], step
