"""Up-front checks of an experiment config: every field in its allowed range or set of values, and
the rules that tie fields together. A bad config fails before anything is read or written, in one
line that names the field and what it may be."""

import math
from typing import Any, Callable

import jax
import numpy as np

from tea_jax import metrics
from tea_jax.data.checks import check_data
from tea_jax.errors import ConfigError
from tea_jax.losses import LossConfig
from tea_jax.model.config import LSTM_IMPLEMENTATIONS, MERGE_MODES

# What a checkpoint can be selected by: the summary's metrics (not its pair count).
SELECTION_METRICS = tuple(k for k in metrics.summarise(np.ones(1)) if k != "count")

Rule = Callable[[Any], str | None]  # None when the value is allowed, else what is allowed


def integer(low: int, high: float = math.inf) -> Rule:
  """An int (not a bool) in [low, high]."""
  def rule(value):
    ok = isinstance(value, int) and not isinstance(value, bool) and low <= value <= high
    return None if ok else f"an integer in [{low}, {high}]"
  return rule


def number(low: float, high: float = math.inf, *, open_low: bool = False,
           open_high: bool = False) -> Rule:
  """A finite real number in the interval (bounds open or closed as asked)."""
  def rule(value):
    if not isinstance(value, (int, float)) or isinstance(value, bool) or not math.isfinite(value):
      ok = False
    else:
      ok = (value > low if open_low else value >= low) and (
          value < high if open_high else value <= high)
    return None if ok else (f"a finite number in {'(' if open_low else '['}{low}, {high}"
                            f"{')' if open_high else ']'}")
  return rule


def one_of(*allowed) -> Rule:
  def rule(value):
    return None if value in allowed else f"one of {allowed}"
  return rule


def odd(value) -> str | None:
  return None if isinstance(value, int) and value >= 1 and value % 2 == 1 else "an odd integer >= 1"


POSITIVE = integer(1)
RULES: dict[str, Rule] = {
    "seed": integer(0), "batch_size": POSITIVE, "eval_batch_size": POSITIVE,
    "num_epochs": POSITIVE, "eval_every_epochs": POSITIVE, "log_every_steps": POSITIVE,
    "max_steps": integer(0), "selection_metric": one_of(*SELECTION_METRICS),
    "optimizer.learning_rate": number(0, open_low=True),
    "optimizer.weight_decay": number(0), "optimizer.b1": number(0, 1, open_high=True),
    "optimizer.b2": number(0, 1, open_high=True), "optimizer.eps": number(0, open_low=True),
    "optimizer.clip_norm": number(0, open_low=True),
    "model.hidden": POSITIVE, "model.num_heads": POSITIVE,
    "model.dropout": number(0, 1, open_high=True),
    "model.video_dim": POSITIVE, "model.word_dim": POSITIVE, "model.narrative_dim": POSITIVE,
    "model.max_positions": POSITIVE, "model.vocab_size": integer(2), "model.cell_size": POSITIVE,
    "model.content_kernel": odd, "model.bound_kernel": odd,
    "model.layer_norm_eps": number(0, open_low=True), "model.merge": one_of(*MERGE_MODES),
    "model.paragraph_branch": one_of(True, False), "model.alpha": number(0),
    "model.lstm": one_of(*LSTM_IMPLEMENTATIONS),
    "loss.highlight_weight": number(0), "loss.rank_weight": number(0),
    "loss.rank_min_iou": number(0, 1), "loss.rank_max_iou": number(0, 1),
    "loss.highlight_extension": number(0), "loss.highlight_end": one_of("min", "max"),
}


def _get(config, path: str):
  node = config
  for part in path.split("."):
    if part not in node:
      return _MISSING
    node = node[part]
  return node


_MISSING = object()


def check_fields(config, rules: dict[str, Rule], prefix: str = "config") -> None:
  """Raises ConfigError for the first field whose value its rule does not allow."""
  for path, rule in rules.items():
    value = _get(config, path)
    if value is _MISSING:
      continue  # older configs may lack optional fields; their defaults apply
    allowed = rule(value)
    if allowed is not None:
      raise ConfigError(f"{prefix}.{path}={value!r}: must be {allowed}")


def check_experiment(config, *, devices: int | None = None) -> None:
  """Every field of a training/evaluation config, then the cross-field rules."""
  check_fields(config, RULES)
  devices = devices or jax.device_count()
  for field in ("batch_size", "eval_batch_size"):
    if config[field] % devices:
      raise ConfigError(f"config.{field}={config[field]}: must be a multiple of the {devices} "
                        f"devices")
  if config.loss.rank_max_iou <= config.loss.rank_min_iou:
    raise ConfigError(f"config.loss.rank_max_iou={config.loss.rank_max_iou}: must be above "
                      f"config.loss.rank_min_iou={config.loss.rank_min_iou}")
  if config.model.hidden % config.model.num_heads:
    raise ConfigError(f"config.model.hidden={config.model.hidden}: must be a multiple of "
                      f"config.model.num_heads={config.model.num_heads}")
  LossConfig.from_config(config)  # no unknown loss fields
  check_data(config.data, max_positions=config.model.max_positions)
