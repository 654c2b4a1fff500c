"""Shared command-line plumbing: quiet, readable logs and clear errors for bad config overrides."""

import importlib.util
import logging
import os
import sys
import threading
from typing import Any, Callable

from absl import app, flags
from absl import logging as absl_logging

from tea_jax.errors import UserError

BAD_INPUT = 2  # the exit status of a command stopped by bad input or configuration
_NOISE = ("FeatureConnector.dtype", "TensorInfo.dtype", "Unable to initialize backend",
          "read_only=True", "Given directory is read only",
          # A checkpoint saved without metrics (an import, a run stopped by max_steps) is meant.
          "Requested `tracked_metric`; did not provide metrics")


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


def bundled_configs() -> str:
  """The folder of the project's configs (configs/*.py)."""
  return os.path.dirname(importlib.util.find_spec("configs").origin)


def _config_paths(argv) -> list[str]:
  """The files named by --config (without their :variant)."""
  paths = []
  for k, arg in enumerate(argv):
    if arg.startswith("--config="):
      paths.append(arg.split("=", 1)[1])
    elif arg == "--config" and k + 1 < len(argv):
      paths.append(argv[k + 1])
  return [path.split(":", 1)[0] for path in paths]


def _check_config_files(argv) -> None:
  """A --config file that does not exist is one line: where it was looked for, and where the
  bundled configs are."""
  for path in _config_paths(argv):
    if not os.path.isfile(path):
      folder = bundled_configs()
      names = ", ".join(sorted(n for n in os.listdir(folder) if n.endswith(".py")
                               and not n.startswith(("_", "common"))))
      _exit_bad_input(f"--config {path}: no such file (a relative path is read from the folder "
                      f"the command runs in, {os.getcwd()}; the bundled configs are in "
                      f"{folder}: {names})")


def _flag_error(error: flags.Error) -> str:
  """One line for absl's flag errors: a config file that fails to load ends with the reason in
  its last line (after ml_collections' traceback)."""
  lines = [line.strip() for line in str(error).splitlines() if line.strip()]
  if len(lines) > 1 and "Error whilst parsing config file" in lines[0]:
    head = lines[0].split(": Error whilst parsing config file")[0].removeprefix("flag ")
    return f"{head}: {lines[-1].split(': ', 1)[-1]}"
  return lines[0] if lines else type(error).__name__


def parse_flags(argv):
  """absl flag parsing whose errors are one line each: a --config file that does not exist, a
  config that fails to load (an unknown variant), a mistyped `--config.x=...` field."""
  _check_config_files(argv)
  try:
    return flags.FLAGS(argv)
  except flags.Error as e:
    _exit_bad_input(_flag_error(e))
  except (AttributeError, KeyError) as e:
    while e.args and isinstance(e.args[0], BaseException):  # ml_collections wraps its KeyError
      e = e.args[0]
    text = str(e.args[0]) if e.args else str(e)
    field, *hints = [line.strip() for line in text.splitlines() if line.strip()]
    bad = " ".join(a for a in argv[1:] if a.startswith("--config.")) or "the overrides"
    hint = f": {' '.join(hints)}" if hints else ""
    _exit_bad_input(f"unknown config field {field.strip(chr(39))!r} in {bad}{hint} (configs are "
                    f"locked, so that a typo cannot add a field)")


def _exit_bad_input(message: str) -> None:
  """Ends a command after one `error:` line, exit status BAD_INPUT."""
  print(f"error: {message}", file=sys.stderr)
  raise SystemExit(BAD_INPUT)


def run_app(main: Callable[[list[str]], Any], doc: str, flags_file: str) -> None:
  """Runs an absl command whose flags are defined in the file `flags_file`: `--help` prints `doc`
  and those flags whether it is started as `python -m ...` or as an installed console script, and
  flag errors are one line (parse_flags)."""
  sys.modules["__main__"].__doc__ = doc  # absl's --help prints __main__'s docstring
  for flag in flags.FLAGS.get_key_flags_for_module(flags_file):
    flags.FLAGS.register_key_flag_for_module(sys.argv[0], flag)
  app.run(main, flags_parser=parse_flags)


def _silence_leftovers() -> None:
  """After the one-line error nothing else is printed: background work the error abandoned (Orbax's
  reads of the other arrays of a damaged checkpoint, as coroutines and threads) would otherwise
  report its own failures as it is collected on the way out."""
  sys.unraisablehook = lambda unraisable: None
  threading.excepthook = lambda args: None


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
