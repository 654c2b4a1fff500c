"""The one exception type for expected failures of the narrate commands."""


class BadInput(Exception):
  """Bad input or flags (a missing folder, an unloadable model, a malformed shard): the commands
  report it in one line, without a traceback; any other exception keeps its traceback."""
