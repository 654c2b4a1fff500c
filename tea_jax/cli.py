"""Shared command-line plumbing: quiet, readable logs and clear errors for bad config overrides."""

import logging
import sys

from absl import flags
from absl import logging as absl_logging

_NOISE = ("FeatureConnector.dtype", "TensorInfo.dtype", "Unable to initialize backend",
          "read_only=True", "Given directory is read only")


class _DropNoise(logging.Filter):
  """Libraries' INFO lines are dropped, except clu's progress reports (steps/s, ETA, time spent
  per phase of the training loop); known noisy warnings are dropped too."""

  def filter(self, record):
    if record.levelno < logging.WARNING and "/clu/" not in record.pathname:
      return False
    return not any(n in record.getMessage() for n in _NOISE)


def setup_logging() -> None:
  """Our INFO lines on the console; libraries (Orbax, tfds, XLA) only from WARNING up."""
  absl_logging.set_verbosity(absl_logging.INFO)
  for name in ("absl", ""):
    logging.getLogger(name).addFilter(_DropNoise())
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
