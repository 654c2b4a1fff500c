"""Every rule a config must follow, in one place: each field's allowed range or values, and the
rules that tie fields together. A bad config fails before anything is read or written, in one line
that names the field and what it may be.

The frozen dataclasses (`tea_jax.model.config.ModelConfig`, `tea_jax.losses.LossConfig`) check
themselves with these rules; `check_experiment` checks a whole experiment config (training and
evaluation) and `check_data` its `data` section (record building too).
"""

import math
from typing import Any, Callable

import jax
import numpy as np

from tea_jax import metrics
from tea_jax.errors import ConfigError

# The merges of docs/design.md section 2: "none" is plain EMB, "concat" is the TEA paper's choice.
MERGE_MODES = ("none", "concat", "add", "attention")
# BiLSTM implementations (tea_jax/model/bilstm.py): "auto" ("pallas" on GPUs where its kernels
# compile, "scan" elsewhere), "scan" everywhere, "pallas" (kernels on GPUs, interpreted elsewhere),
# "cudnn" on CUDA GPUs only.
LSTM_IMPLEMENTATIONS = ("auto", "scan", "pallas", "cudnn")
# Reductions of videos longer than data.max_snippets (docs/design.md section 1).
POOLINGS = ("mean", "max")
# What record building does with an annotation EMB keeps although it is wrong (section 16).
BAD_RECORD_POLICIES = ("reference", "skip", "fail")
# What record building does with an evaluation split's video without features or narratives.
MISSING_POLICIES = ("fail", "zeros", "skip")
# How checkpoints are chosen and splits reported (configs/common.py: protocol).
PROTOCOLS = ("val", "reference")
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
  """One of the listed values."""
  def rule(value):
    return None if value in allowed else f"one of {allowed}"
  return rule


def odd(value) -> str | None:
  """An odd positive integer (a centred convolution kernel)."""
  return None if isinstance(value, int) and value >= 1 and value % 2 == 1 else "an odd integer >= 1"


POSITIVE = integer(1)
MODEL_RULES: dict[str, Rule] = {
    "hidden": POSITIVE, "num_heads": POSITIVE, "dropout": number(0, 1, open_high=True),
    "video_dim": POSITIVE, "word_dim": POSITIVE, "narrative_dim": POSITIVE,
    "max_positions": POSITIVE, "vocab_size": integer(2), "cell_size": POSITIVE,
    "content_kernel": odd, "bound_kernel": odd, "layer_norm_eps": number(0, open_low=True),
    "merge": one_of(*MERGE_MODES), "paragraph_branch": one_of(True, False),
    "alpha": number(0), "lstm": one_of(*LSTM_IMPLEMENTATIONS),
}
LOSS_RULES: dict[str, Rule] = {
    "highlight_weight": number(0), "rank_weight": number(0), "rank_min_iou": number(0, 1),
    "rank_max_iou": number(0, 1), "highlight_extension": number(0),
    "highlight_end": one_of("min", "max"),
}
DATA_RULES: dict[str, Rule] = {
    "max_snippets": POSITIVE, "max_words": POSITIVE, "num_shards": POSITIVE,
    "shuffle_buffer": POSITIVE, "pad_snippets": integer(0), "pad_words": integer(0),
    "pooling": one_of(*POOLINGS), "bad_records": one_of(*BAD_RECORD_POLICIES),
    "strict": one_of(True, False), "missing": one_of(*MISSING_POLICIES),
}
# The train-free retriever's segment search (tea_jax/trainfree.py: SearchSettings).
TRAINFREE_RULES: dict[str, Rule] = {
    "threshold": number(0, 1), "window_fraction": number(0, 1, open_low=True),
    "max_fraction": number(0, 1, open_low=True), "rise_threshold": number(-math.inf),
    "sigma": number(0, open_low=True), "nms_iou": number(0, 1), "glove_weight": number(0),
    "text_weight": number(0), "frames_weight": number(0),
    "scores": lambda value: None if isinstance(value, str) else "a file name (str)",
}
RULES: dict[str, Rule] = {
    "seed": integer(0), "batch_size": POSITIVE, "eval_batch_size": POSITIVE,
    "num_epochs": POSITIVE, "eval_every_epochs": POSITIVE, "log_every_steps": POSITIVE,
    "max_steps": integer(0), "selection_metric": one_of(*SELECTION_METRICS),
    "protocol": one_of(*PROTOCOLS),
    "optimizer.learning_rate": number(0, open_low=True),
    "optimizer.weight_decay": number(0), "optimizer.b1": number(0, 1, open_high=True),
    "optimizer.b2": number(0, 1, open_high=True), "optimizer.eps": number(0, open_low=True),
    "optimizer.clip_norm": number(0, open_low=True),
    **{f"model.{k}": rule for k, rule in MODEL_RULES.items()},
    **{f"loss.{k}": rule for k, rule in LOSS_RULES.items()},
    **{f"trainfree.{k}": rule for k, rule in TRAINFREE_RULES.items()},
}

_MISSING = object()


def _get(config, path: str):
  node = config
  for part in path.split("."):
    if part not in node:
      return _MISSING
    node = node[part]
  return node


def uses_narrative(model) -> bool:
  """Whether a model (its config section, or a ModelConfig as a dict) reads narrative features:
  the VN merge or the PQ branch is on."""
  return model["merge"] != "none" or bool(model["paragraph_branch"])


def check_fields(config, rules: dict[str, Rule], prefix: str = "config") -> None:
  """Raises ConfigError for the first field whose value its rule does not allow."""
  for path, rule in rules.items():
    value = _get(config, path)
    if value is _MISSING:
      continue  # a field the config does not set keeps its (allowed) default
    allowed = rule(value)
    if allowed is not None:
      raise ConfigError(f"{prefix}.{path}={value!r}: must be {allowed}")


def check_model(model) -> None:
  """The model fields (a ModelConfig's, as a dict) and the rules between them."""
  check_fields(model, MODEL_RULES, "config.model")
  if model["hidden"] % model["num_heads"]:
    raise ConfigError(f"config.model.hidden={model['hidden']}: must be a multiple of "
                      f"config.model.num_heads={model['num_heads']}")


def check_loss(loss) -> None:
  """The loss fields (a LossConfig's, as a dict) and the rules between them."""
  check_fields(loss, LOSS_RULES, "config.loss")
  if loss["rank_max_iou"] <= loss["rank_min_iou"]:
    raise ConfigError(f"config.loss.rank_max_iou={loss['rank_max_iou']}: must be above "
                      f"config.loss.rank_min_iou={loss['rank_min_iou']}")


def check_known(section, rules: dict[str, Rule], name: str) -> None:
  """A section of a config may hold only fields the rules know (a ConfigDict that was unlocked,
  or a config.json written by hand, could carry a typo)."""
  unknown = sorted(set(section) - set(rules))
  if unknown:
    raise ConfigError(f"unknown fields in config.{name}: {unknown}")


def check_data(data, max_positions: int | None = None) -> None:
  """The `data` section: each field, the splits, and the lengths against the positional table."""
  def bad(field, allowed):
    raise ConfigError(f"config.data.{field}={data[field]!r}: must be {allowed}")

  check_fields(data, DATA_RULES, "config.data")
  if not data.splits:
    bad("splits", "a non-empty mapping of split names to annotation files")
  for field in ("train_split", "selection_split"):
    if data[field] not in data.splits:
      bad(field, f"one of the splits {tuple(data.splits)}")
  unknown = [s for s in data.eval_splits if s not in data.splits]
  if not data.eval_splits or unknown:
    bad("eval_splits", f"a non-empty tuple of splits among {tuple(data.splits)}")
  order = tuple(data.get("split_order", ()) or ())
  if order and sorted(order) != sorted(data.splits):
    bad("split_order", f"the splits {tuple(sorted(data.splits))}, each once, in declared order")
  if max_positions is not None:
    for field in ("max_snippets", "max_words", "pad_snippets", "pad_words"):
      if data[field] > max_positions:
        bad(field, f"at most config.model.max_positions={max_positions} (the positional table)")


def check_experiment(config, *, devices: int | None = None) -> None:
  """Every field of a training/evaluation config, then the rules between fields."""
  check_fields(config, RULES)
  check_known(config.model, MODEL_RULES, "model")
  check_known(config.get("loss", {}), LOSS_RULES, "loss")
  check_known(config.get("trainfree", {}), TRAINFREE_RULES, "trainfree")
  check_model(config.model)
  if "loss" in config:
    check_loss(config.loss)
  devices = devices or jax.device_count()
  for field in ("batch_size", "eval_batch_size"):
    if config[field] % devices:
      raise ConfigError(f"config.{field}={config[field]}: must be a multiple of the {devices} "
                        f"devices")
  check_data(config.data, max_positions=config.model.max_positions)
