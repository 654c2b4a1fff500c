"""Shared command-line plumbing: quiet, readable logs and clear errors for bad config overrides."""

import logging
import sys
import threading
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


# Every module logs through `logging.getLogger(__name__)`: these are the project's package loggers.
PACKAGES = ("tea_jax", "data_prep", "tea_apps")


def setup_logging() -> None:
  """Our INFO lines on the console; libraries (Orbax, tfds, XLA) only from WARNING up."""
  absl_logging.set_verbosity(absl_logging.INFO)
  # On the handlers, so that records propagated from libraries' own loggers are filtered too.
  for handler in logging.getLogger().handlers + [absl_logging.get_absl_handler()]:
    if not any(isinstance(f, _DropNoise) for f in handler.filters):
      handler.addFilter(_DropNoise())
  handler = logging.StreamHandler(sys.stderr)
  handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s", "%H:%M:%S"))
  for name in PACKAGES:
    logger = logging.getLogger(name)
    if not logger.handlers:
      logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    logger.propagate = False


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


def _silence_leftovers() -> None:
  """After the one-line error nothing else is printed: background work the error abandoned (Orbax's
  reads of the other arrays of a damaged checkpoint, as coroutines and threads) would otherwise
  report its own failures as it is collected on the way out."""
  sys.unraisablehook = lambda unraisable: None
  threading.excepthook = lambda args: None


BAD_INPUT = 2  # the exit status of a command stopped by bad input or configuration


def call_reporting(command: Callable[[], Any]) -> tuple[int, Any]:
  """(0, the command's result), or (BAD_INPUT, None) once bad input or configuration (UserError, a
  missing file) has been reported in one `error: ...` line; any other exception is a bug and keeps
  its traceback."""
  try:
    return 0, command()
  except (UserError, FileNotFoundError) as e:
    print(f"error: {e}", file=sys.stderr)
    _silence_leftovers()
    return BAD_INPUT, None
  except Exception:
    print("tea_jax: unexpected error (a bug, not a bad input): please report it with the traceback "
          "below", file=sys.stderr)
    raise


def run_reporting(command: Callable[[], Any]) -> Any:
  """The command's result; bad input ends the process after its one line (call_reporting)."""
  status, result = call_reporting(command)
  if status:
    raise SystemExit(status)
  return result
