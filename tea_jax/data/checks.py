"""Checks of the `data` section of a config, shared by record building and training: the allowed
values of each field and the rules between them, each failure one line naming the field."""

from tea_jax.errors import ConfigError

POOLINGS = ("mean", "max")
BAD_RECORD_POLICIES = ("reference", "skip", "fail")


def _positive(value) -> bool:
  return isinstance(value, int) and not isinstance(value, bool) and value >= 1


def _non_negative(value) -> bool:
  return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def check_data(data, max_positions: int | None = None) -> None:
  """Raises ConfigError for the first bad field of `config.data`."""
  def bad(field, allowed):
    raise ConfigError(f"config.data.{field}={data[field]!r}: must be {allowed}")

  if not data.splits:
    bad("splits", "a non-empty mapping of split names to annotation files")
  for field in ("train_split", "selection_split"):
    if data[field] not in data.splits:
      bad(field, f"one of the splits {tuple(data.splits)}")
  unknown = [s for s in data.eval_splits if s not in data.splits]
  if not data.eval_splits or unknown:
    bad("eval_splits", f"a non-empty tuple of splits among {tuple(data.splits)}")
  if data.pooling not in POOLINGS:
    bad("pooling", f"one of {POOLINGS}")
  if data.get("bad_records", "reference") not in BAD_RECORD_POLICIES:
    bad("bad_records", f"one of {BAD_RECORD_POLICIES}")
  order = tuple(data.get("split_order", ()) or ())
  if order and (sorted(order) != sorted(data.splits) or order[0] != data.train_split):
    bad("split_order", f"the splits {tuple(sorted(data.splits))} in declared order, "
                       f"{data.train_split!r} first")
  for field in ("max_snippets", "max_words", "num_shards", "shuffle_buffer"):
    if not _positive(data[field]):
      bad(field, "a positive integer")
  for field in ("pad_snippets", "pad_words"):
    if not _non_negative(data[field]):
      bad(field, "0 (automatic) or a positive integer")
  if max_positions is not None:
    for field in ("max_snippets", "max_words", "pad_snippets", "pad_words"):
      if data[field] > max_positions:
        bad(field, f"at most config.model.max_positions={max_positions} (the positional table)")
  if not isinstance(data.strict, bool):
    bad("strict", "True or False")
