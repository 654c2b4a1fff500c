"""The one exception type for expected failures of the narrate commands."""

from tea_jax.errors import InputError


class BadInput(InputError):
  """Bad input or flags (a missing folder, an unloadable model, a malformed shard): the commands
  report it in one line, without a traceback; any other exception keeps its traceback. It is a
  tea_jax InputError, so commands that reuse the narration helpers (extract_features) report it
  the same way."""
