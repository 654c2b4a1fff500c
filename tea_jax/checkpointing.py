"""Every Orbax call of tea_jax lives here.

  checkpoints/<step>/    Orbax checkpoints; items `variables` = {"params", "frozen"} and (training)
                         `train_state` = {optimizer state, step}; a checkpoint evaluated on the
                         selection split carries its metrics (Orbax stores them with it)
  damaged_checkpoints/   checkpoints that could not be read, moved aside (never deleted)
(the workdir's other files: tea_jax.workdir).

One CheckpointManager per run decides what is kept (docs/design.md section 18): the latest
`keep_latest` checkpoints and, for each (split, metric) the protocol selects by, the best one (ties
go to the earlier step), so a best checkpoint is a fact on disk, written in the same atomic step as
the checkpoint itself. An evaluated checkpoint carries {"step": s, "splits": {split: summary}}.

Checkpoints restore onto the devices of the restoring run, replicated, whatever topology saved
them: a checkpoint written by two hosts evaluates on one CPU, and the other way round.
"""

import datetime
import json
import logging
import math
import os
import shutil
import time
import types
from typing import Any

import jax
import orbax.checkpoint as ocp
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P
from orbax.checkpoint import checkpoint_managers

from tea_jax import workdir as workdir_files
from tea_jax.errors import CheckpointError
from tea_jax.mesh import make_mesh

log = logging.getLogger(__name__)

CHECKPOINT_DIR = "checkpoints"
# Damaged checkpoints are moved here (never deleted) when a run falls back to an older one.
DAMAGED_DIR = "damaged_checkpoints"
VARIABLES = "variables"
TRAIN_STATE = "train_state"
# The metric the reference protocol selects by on every reported split (EMB's R1 sum + mIoU).
REFERENCE_METRIC = "r1_sum_miou"
# What a workdir of an older tea_jax holds instead (a best checkpoint kept by hand).
_OLDER_LAYOUT = ("best", "best.json")
RETRAIN = "train into a new workdir (evaluation and predict still read its checkpoints' variables)"


def ranking(split: str, metric: str):
  """Sort key of a checkpoint by `metric` on `split`: higher first, then the earlier step; one
  without an evaluation of `split` comes last."""
  def key(metrics) -> tuple[float, int]:
    summary = (metrics or {}).get("splits", {}).get(split)
    return (summary[metric] if summary else -math.inf), -(metrics or {}).get("step", 0)
  return key


def selections(config) -> list[tuple[str, str]]:
  """The (split, metric) pairs a run keeps the best checkpoint of: the selection split's metric
  under "val", every reported split's R1 sum + mIoU under "reference"."""
  if config.get("protocol", "val") == "reference":
    return [(split, REFERENCE_METRIC) for split in config.data.eval_splits]
  return [(config.data.selection_split, config.selection_metric)]


def model_selection(config) -> tuple[str, str] | None:
  """The (split, metric) whose best checkpoint is "the workdir's model" (for predict, and for
  evaluation without --step): the first of `selections`; None for a workdir without data (an
  imported EMB checkpoint: its only checkpoint)."""
  return selections(config)[0] if config.get("data") else None


def check_layout(workdir: str) -> None:
  """Refuses, in one line, a workdir that an older tea_jax wrote."""
  old = [name for name in _OLDER_LAYOUT if os.path.exists(os.path.join(workdir, name))]
  if old:
    raise CheckpointError(f"workdir {workdir} was written by an older tea_jax ({' and '.join(old)}"
                          f"); train into a new workdir, or evaluate one of its checkpoints in "
                          f"{CHECKPOINT_DIR}/ with --step N")


# Small JSON files Orbax reads from every checkpoint when a manager opens the folder.
_CHECKPOINT_JSON = ("_CHECKPOINT_METADATA", os.path.join("metrics", "metrics"))


def _damaged_json(step_dir: str) -> str | None:
  """Why one of the checkpoint's JSON files cannot be read, or None."""
  for name in _CHECKPOINT_JSON:
    path = os.path.join(step_dir, name)
    if os.path.exists(path):
      try:
        with open(path, encoding="utf-8") as f:
          json.load(f)
      except (ValueError, OSError) as e:  # JSONDecodeError and UnicodeDecodeError are ValueErrors
        return f"{name}: {type(e).__name__}: {_first_line(e)}"
  return None


def _screen(directory: str, read_only: bool) -> None:
  """Checks the files Orbax reads on opening a checkpoint folder: a checkpoint whose metadata or
  metrics file is damaged is moved to damaged_checkpoints/ with a warning (training), or named in
  one line (evaluation), instead of failing inside Orbax with a traceback."""
  if not os.path.isdir(directory):
    return
  for name in sorted(os.listdir(directory)):
    step_dir = os.path.join(directory, name)
    why = _damaged_json(step_dir) if name.isdigit() and os.path.isdir(step_dir) else None
    if why is None:
      continue
    if read_only:
      raise CheckpointError(f"checkpoint {step_dir} is damaged ({why}); resuming the training "
                            f"sets it aside, or move it out of {directory}")
    _move_aside(directory, int(name), why)


def manager(workdir: str, *, keep_best: list[tuple[str, str]] = (), keep_latest: int = 2,
            read_only: bool = False) -> ocp.CheckpointManager:
  """The run's CheckpointManager over `workdir/checkpoints`: keeps the latest `keep_latest`
  checkpoints and the best one for each (split, metric) of `keep_best`."""
  check_layout(workdir)
  directory = os.path.join(os.path.abspath(workdir), CHECKPOINT_DIR)
  _screen(directory, read_only)
  policy = checkpoint_managers.AnyPreservationPolicy(
      [checkpoint_managers.LatestN(n=keep_latest)]
      + [checkpoint_managers.BestN(get_metric_fn=ranking(split, metric), n=1,
                                   keep_checkpoints_without_metrics=False)
         for split, metric in keep_best])
  # A best_fn makes Orbax store the metrics with each checkpoint; what is kept is the policy's.
  options = ocp.CheckpointManagerOptions(
      create=not read_only, read_only=read_only, enable_async_checkpointing=False,
      preservation_policy=None if read_only else policy, best_fn=lambda m: m["step"],
      best_mode="max")
  # Explicit handlers let item_metadata() describe a checkpoint before anything is restored.
  handlers = {VARIABLES: ocp.StandardCheckpointHandler(),
              TRAIN_STATE: ocp.StandardCheckpointHandler()}
  mngr = ocp.CheckpointManager(directory, options=options, item_handlers=handlers)
  if not read_only:
    _finish_deletions(mngr, policy)
  return mngr


def _finish_deletions(mngr: ocp.CheckpointManager, policy) -> None:
  """Applies the preservation policy to the checkpoints on disk. Orbax applies it after each
  save; a kill while it deletes a checkpoint the last save rotated out would otherwise leave that
  checkpoint half deleted for good (no later save comes to finish the job)."""
  infos = []
  for step in sorted(mngr.all_steps()):
    try:
      metrics = mngr.metrics(step)
    except Exception:  # pylint: disable=broad-except
      metrics = None  # its metrics file went first: not a best checkpoint then
    infos.append(types.SimpleNamespace(step=step, metrics=metrics, time=datetime.datetime.now()))
  kept = policy.should_preserve(infos, context=checkpoint_managers.PreservationContext())
  for info, keep in zip(infos, kept):
    if not keep:
      log.info("checkpoint %s is kept by no rule (a deletion cut short): deleting it",
               mngr.directory / str(info.step))
      mngr.delete(info.step)


def save(mngr: ocp.CheckpointManager, step: int, variables: Any, train_state: Any = None,
         metrics: dict | None = None) -> None:
  """Saves checkpoint `step` (Orbax writes a temporary folder and renames it). `metrics`
({split: summary} of the evaluation made at this step) mark it as evaluated."""
  items = {VARIABLES: ocp.args.StandardSave(variables)}
  if train_state is not None:
    items[TRAIN_STATE] = ocp.args.StandardSave(train_state)
  if metrics is not None:
    metrics = {"step": int(step), "splits": metrics}
  mngr.save(step, args=ocp.args.Composite(**items), metrics=metrics, force=True)
  mngr.wait_until_finished()


def save_variables(workdir: str, variables: Any, step: int = 0) -> str:
  """Saves flax variables only (imports); returns the checkpoint directory."""
  with manager(workdir) as mngr:
    save(mngr, step, variables)
    return os.path.join(str(mngr.directory), str(step))


def best_step(mngr: ocp.CheckpointManager, selection: tuple[str, str] | None) -> int | None:
  """The best kept checkpoint by `selection` = (split, metric), else the latest one, else None."""
  if selection is not None:
    key = ranking(*selection)
    evaluated = [(key(mngr.metrics(s)), s) for s in mngr.all_steps()]
    evaluated = [(k, s) for k, s in evaluated if k[0] > -math.inf]
    if evaluated:
      return max(evaluated)[1]
  return mngr.latest_step()


def _targets(tree):
  """Restore targets: the shapes and dtypes of `tree` (arrays or Orbax array metadata), replicated
  over the devices of this run rather than those of the run that saved."""
  sharding = NamedSharding(make_mesh(), P())  # one copy on every device: all tea_jax state
  return jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=sharding), tree,
                      is_leaf=lambda x: hasattr(x, "shape") and hasattr(x, "dtype"))


def restore(mngr: ocp.CheckpointManager, step: int, *, variables_like=None,
            train_state_like=None) -> dict[str, Any]:
  """Restores the items of checkpoint `step`; `*_like` give target structures (e.g. optax states);
  without `variables_like`, the variables' structure is read from the checkpoint."""
  if variables_like is None:
    metadata = mngr.item_metadata(step)[VARIABLES]
    variables_like = getattr(metadata, "tree", metadata)
  items = {VARIABLES: ocp.args.StandardRestore(_targets(variables_like))}
  if train_state_like is not None:
    items[TRAIN_STATE] = ocp.args.StandardRestore(_targets(train_state_like))
  return dict(mngr.restore(step, args=ocp.args.Composite(**items)).items())


def _key_name(key) -> str:
  """A path entry as Orbax stores it: a dict key, a named tuple's field name (Orbax saves named
  tuples as dicts), or a sequence index."""
  for attribute in ("key", "name", "idx"):
    if hasattr(key, attribute):
      return str(getattr(key, attribute))
  return str(key)


def _leaf_shapes(tree) -> dict[str, tuple]:
  leaves = jax.tree_util.tree_flatten_with_path(
      tree, is_leaf=lambda x: hasattr(x, "shape") and hasattr(x, "dtype"))[0]
  return {"/".join(_key_name(k) for k in path): tuple(leaf.shape) for path, leaf in leaves}


def _check_architecture(mngr, step: int, variables_like) -> None:
  """A readable checkpoint written for another model is a configuration mistake, not damage."""
  metadata = mngr.item_metadata(step)[VARIABLES]
  saved = _leaf_shapes(getattr(metadata, "tree", metadata))
  wanted = _leaf_shapes(variables_like)
  if saved != wanted:
    diff = sorted(set(saved.items()) ^ set(wanted.items()))[0]
    raise CheckpointError(f"checkpoint {mngr.directory / str(step)} was written for another model "
                          f"than this config makes (first difference: {diff[0]} {diff[1]}); "
                          f"resume with the config it was trained with or use a new workdir")


def _check_training_state(mngr, step: int, train_state_like) -> None:
  """A training state of another layout is a checkpoint of an older tea_jax, not damage."""
  metadata = mngr.item_metadata(step)[TRAIN_STATE]
  if _leaf_shapes(getattr(metadata, "tree", metadata)) != _leaf_shapes(train_state_like):
    raise CheckpointError(f"checkpoint {mngr.directory / str(step)} was written by an older "
                          f"tea_jax (its training state has another layout): {RETRAIN}")


def restore_latest_intact(mngr, variables_like, train_state_like) -> dict[str, Any] | None:
  """Restores the newest checkpoint that can be read; damaged newer ones are reported in one line
  each and moved to <workdir>/damaged_checkpoints/ (kept, never deleted). None when there is
  no checkpoint at all. A checkpoint of another model or of an older tea_jax is a
  CheckpointError, never counted as damage."""
  for step in sorted(mngr.all_steps(), reverse=True):
    try:
      _check_architecture(mngr, step, variables_like)
      _check_training_state(mngr, step, train_state_like)
      return restore(mngr, step, variables_like=variables_like,
                     train_state_like=train_state_like)
    except CheckpointError:
      raise
    except Exception as e:  # pylint: disable=broad-except
      # Orbax raises many types for unreadable files; any of them makes the checkpoint unusable.
      _set_aside(mngr, step, e)
  return None


def _move_aside(directory, step: int, why: str) -> None:
  """Moves checkpoint `step` of `directory` to <workdir>/damaged_checkpoints/, with a warning."""
  source = os.path.join(directory, str(step))
  target = os.path.join(os.path.dirname(directory), DAMAGED_DIR,
                        f"{step}-{time.strftime('%Y%m%d-%H%M%S')}")
  log.warning("checkpoint %s cannot be read (%s); moved it to %s and falling back to the "
              "previous one", source, why, target)
  os.makedirs(os.path.dirname(target), exist_ok=True)
  try:
    shutil.move(source, target)
  except FileNotFoundError:
    pass  # another process of a multi-host run moved it first


def _set_aside(mngr, step: int, error: Exception) -> None:
  _move_aside(str(mngr.directory), step, f"{type(error).__name__}: {_first_line(error)}")
  mngr.reload()


def _first_line(error: Exception) -> str:
  """The gist of an error's message: its first line, without TensorStore's spec dump."""
  text = str(error).split(" See full TensorStore details")[0].strip().splitlines()
  return text[0][:200] if text else ""


def restore_variables(workdir: str, step: int | None = None,
                      selection: tuple[str, str] | None = None) -> tuple[Any, int]:
  """Variables of checkpoint `step`, else of the best checkpoint by `selection` (split, metric;
  default: the workdir's model, `model_selection` of its config.json), else of the latest one.
  Returns (variables, step). A damaged checkpoint is an error naming it (no fallback: the caller
  asked for that checkpoint)."""
  if step is None and selection is None and os.path.isfile(os.path.join(workdir, workdir_files.CONFIG_FILE)):
    selection = model_selection(workdir_files.read_config(workdir))
  with manager(workdir, read_only=True) as mngr:
    steps = sorted(mngr.all_steps())
    if not steps:
      raise FileNotFoundError(f"no checkpoint in workdir {workdir!r} ({CHECKPOINT_DIR}/)")
    if step is None:
      step = best_step(mngr, selection)
    elif step not in steps:
      raise FileNotFoundError(f"no checkpoint of step {step} in {workdir}; it has {steps}")
    try:
      return restore(mngr, step)[VARIABLES], step
    except Exception as e:  # pylint: disable=broad-except
      others = [s for s in steps if s != step]
      raise CheckpointError(f"checkpoint {mngr.directory / str(step)} cannot be read "
                            f"({type(e).__name__}: {_first_line(e)}): it is damaged; evaluate "
                            f"another one with --step N (this workdir also has {others})") from e
