"""Shared command-line plumbing: quiet, readable logs and clear errors for bad config overrides."""

import logging
import sys
from typing import Any, Callable

from absl import flags
from absl import logging as absl_logging

from tea_jax.errors import UserError

_NOISE = ("FeatureConnector.dtype", "TensorInfo.dtype", "Unable to initialize backend",
          "read_only=True", "Given directory is read only")


class _DropNoise(logging.Filter):
  """Libraries' INFO lines are dropped, except clu's progress reports (steps/s, ETA, time spent
  per phase of the training loop); known noisy warnings are dropped too."""

  def filter(self, record):
    if record.levelno < logging.WARNING and "/clu/periodic_actions" not in record.pathname:
      return False
    return not any(n in record.getMessage() for n in _NOISE)


def setup_logging() -> None:
  """Our INFO lines on the console; libraries (Orbax, tfds, XLA) only from WARNING up."""
  absl_logging.set_verbosity(absl_logging.INFO)
  # On the handlers, so that records propagated from libraries' own loggers are filtered too.
  for handler in logging.getLogger().handlers + [absl_logging.get_absl_handler()]:
    if not any(isinstance(f, _DropNoise) for f in handler.filters):
      handler.addFilter(_DropNoise())
  ours = logging.getLogger("tea_jax")
  if not ours.handlers:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s", "%H:%M:%S"))
    ours.addHandler(handler)
  ours.setLevel(logging.INFO)
  ours.propagate = False
  for name in ("build_records",):
    logging.getLogger(name).handlers = ours.handlers
    logging.getLogger(name).setLevel(logging.INFO)
    logging.getLogger(name).propagate = False


def parse_flags(argv):
  """absl flag parsing that turns a mistyped `--config.x=...` into a one-line error."""
  try:
    return flags.FLAGS(argv)
  except flags.Error as e:
    sys.exit(f"error: {e}")
  except (AttributeError, KeyError) as e:
    bad = [a for a in argv[1:] if a.startswith("--config.")]
    sys.exit(f"error: unknown config field {e} in {' '.join(bad) or 'the overrides'}; configs are "
             f"locked so that a typo cannot silently add a field (see the config file's fields)")


def run_reporting(command: Callable[[], Any]) -> Any:
  """Runs a command: bad input or configuration (UserError, a missing file) ends it with one
  `error: ...` line and exit status 2; any other exception is a bug and keeps its traceback."""
  try:
    return command()
  except (UserError, FileNotFoundError) as e:
    print(f"error: {e}", file=sys.stderr)
    sys.exit(2)
  except Exception:
    print("tea_jax: unexpected error (a bug, not a bad input): please report it with the traceback "
          "below", file=sys.stderr)
    raise
