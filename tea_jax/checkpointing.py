"""Every Orbax call of tea_jax lives here, plus the small JSON files beside the checkpoints.

Layout of a workdir:
  config.json            the experiment config (ml_collections, as a dict)
  vocab.json             the vocabulary the embedding table implies
  checkpoints/<step>/    the latest Orbax checkpoints; items `variables` = {"params", "frozen"}
                         and (training) `train_state` = {optimizer state, step}
  best/<step>/           the best checkpoint by the configured metric (same items)
  best.json              which step is best, by which metric and split, and its value

Checkpoints restore onto the devices of the restoring run, replicated, whatever topology saved
them: a checkpoint written by two hosts evaluates on one CPU, and the other way round.
"""

import json
import os
from typing import Any

import jax
import ml_collections
import orbax.checkpoint as ocp
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from tea_jax.mesh import make_mesh

CHECKPOINT_DIR = "checkpoints"
BEST_DIR = "best"
VARIABLES = "variables"
TRAIN_STATE = "train_state"


def read_config(workdir: str) -> ml_collections.ConfigDict:
  """The experiment config saved in `workdir/config.json`."""
  path = os.path.join(workdir, "config.json")
  if not os.path.isfile(path):
    raise FileNotFoundError(f"no config.json in workdir {workdir!r}: not a tea_jax workdir")
  with open(path, encoding="utf-8") as f:
    return ml_collections.ConfigDict(json.load(f))


def manager(workdir: str, *, subdir: str = CHECKPOINT_DIR, max_to_keep: int | None = None,
            read_only: bool = False) -> ocp.CheckpointManager:
  """A CheckpointManager over `workdir/<subdir>` with the `variables` and `train_state` items."""
  directory = os.path.join(os.path.abspath(workdir), subdir)
  options = ocp.CheckpointManagerOptions(max_to_keep=max_to_keep, create=not read_only,
                                         read_only=read_only, enable_async_checkpointing=False)
  # Explicit handlers let item_metadata() describe a checkpoint before anything is restored.
  handlers = {VARIABLES: ocp.StandardCheckpointHandler(),
              TRAIN_STATE: ocp.StandardCheckpointHandler()}
  return ocp.CheckpointManager(directory, options=options, item_handlers=handlers)


def save(workdir: str, step: int, variables: Any, train_state: Any = None, *,
         subdir: str = CHECKPOINT_DIR, max_to_keep: int | None = None) -> str:
  """Saves a checkpoint (atomically: Orbax writes a temporary folder and renames it)."""
  items = {VARIABLES: ocp.args.StandardSave(variables)}
  if train_state is not None:
    items[TRAIN_STATE] = ocp.args.StandardSave(train_state)
  with manager(workdir, subdir=subdir, max_to_keep=max_to_keep) as mngr:
    mngr.save(step, args=ocp.args.Composite(**items), force=True)
    mngr.wait_until_finished()
    return os.path.join(str(mngr.directory), str(step))


def save_variables(workdir: str, variables: Any, step: int = 0) -> str:
  """Saves flax variables only (imports); returns the checkpoint directory."""
  return save(workdir, step, variables)


def steps(workdir: str, subdir: str = CHECKPOINT_DIR) -> list[int]:
  if not os.path.isdir(os.path.join(workdir, subdir)):
    return []
  with manager(workdir, subdir=subdir, read_only=True) as mngr:
    return sorted(mngr.all_steps())


def _targets(tree):
  """Restore targets: the shapes and dtypes of `tree` (arrays or Orbax array metadata), replicated
  over the devices of this run rather than those of the run that saved."""
  sharding = NamedSharding(make_mesh(), P())  # one copy on every device: all tea_jax state
  return jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=sharding), tree,
                      is_leaf=lambda x: hasattr(x, "shape") and hasattr(x, "dtype"))


def restore(workdir: str, step: int, *, subdir: str = CHECKPOINT_DIR, variables_like=None,
            train_state_like=None) -> dict[str, Any]:
  """Restores the items of checkpoint `step`; `*_like` give target structures (e.g. optax states);
  without `variables_like`, the variables' structure is read from the checkpoint."""
  with manager(workdir, subdir=subdir, read_only=True) as mngr:
    if variables_like is None:
      metadata = mngr.item_metadata(step)[VARIABLES]
      variables_like = getattr(metadata, "tree", metadata)
    items = {VARIABLES: ocp.args.StandardRestore(_targets(variables_like))}
    if train_state_like is not None:
      items[TRAIN_STATE] = ocp.args.StandardRestore(_targets(train_state_like))
    return dict(mngr.restore(step, args=ocp.args.Composite(**items)).items())


def restore_variables(workdir: str, step: int | None = None) -> tuple[Any, int]:
  """Variables of checkpoint `step` (searched in checkpoints/ and best/), else of the best
  checkpoint, else of the latest one. Returns (variables, step)."""
  latest, best = steps(workdir, CHECKPOINT_DIR), steps(workdir, BEST_DIR)
  if not latest and not best:
    raise FileNotFoundError(f"no checkpoint in workdir {workdir!r} ({CHECKPOINT_DIR}/ or "
                            f"{BEST_DIR}/)")
  if step is None:
    subdir, step = (BEST_DIR, best[-1]) if best else (CHECKPOINT_DIR, latest[-1])
  elif step in best:
    subdir = BEST_DIR
  elif step in latest:
    subdir = CHECKPOINT_DIR
  else:
    raise FileNotFoundError(f"no checkpoint of step {step} in {workdir}; it has "
                            f"{sorted(set(latest) | set(best))}")
  return restore(workdir, step, subdir=subdir)[VARIABLES], step


def read_json(path: str, default=None):
  if not os.path.isfile(path):
    return default
  with open(path, encoding="utf-8") as f:
    return json.load(f)
