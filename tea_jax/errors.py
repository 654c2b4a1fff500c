"""The errors a user can cause (bad input, bad configuration): commands report them in one line.

Anything else is a bug and keeps its traceback (tea_jax.cli.run_reporting).
"""


class UserError(Exception):
  """Bad input or configuration, explained in the message (which names the file or field)."""


class ConfigError(UserError, ValueError):
  """A config field out of its allowed range or values, or fields that contradict each other."""


class InputError(UserError, ValueError):
  """An input file that is missing, corrupt or inconsistent with the rest."""


class CheckpointError(UserError):
  """A checkpoint that cannot be read, or a workdir that cannot be used."""
