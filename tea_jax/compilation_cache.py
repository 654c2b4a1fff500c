"""JAX's persistent compilation cache for tea_jax runs: the train and eval steps compile once per
machine and configuration, and every later run (a resumed one, the next epoch's evaluation in a new
process, another ablation with the same shapes) loads them in seconds.

Where the cache lives, first match:
  1. an explicit directory (config.compilation_cache), "off" to disable;
  2. the TEA_JAX_COMPILATION_CACHE environment variable (same values);
  3. JAX's own setting, if the process already has one (JAX_COMPILATION_CACHE_DIR), untouched;
  4. `.jax_cache` beside the run's workdir (shared by the runs of one parent folder), if writable;
  5. the user cache folder: $XDG_CACHE_HOME/tea_jax/jax_cache, else ~/.cache/tea_jax/jax_cache.

The cache holds compiled executables that JAX loads and runs: like any code folder it must only be
writable by people you trust.
"""

import logging
import os

import jax
from jax.experimental.compilation_cache import compilation_cache as jax_cache

log = logging.getLogger("tea_jax")

ENV_VAR = "TEA_JAX_COMPILATION_CACHE"
DISABLED = ("off", "none", "false", "0")
# Programs compiling faster than this are not worth a file (JAX's default is 1 s).
MIN_COMPILE_SECONDS = 1.0


def default_directory(workdir: str | None = None) -> str:
  """The cache folder when none is configured: beside the workdir if given, else the user's."""
  if workdir:
    parent = os.path.dirname(os.path.abspath(workdir))
    if os.access(parent, os.W_OK):
      return os.path.join(parent, ".jax_cache")
  base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
  return os.path.join(base, "tea_jax", "jax_cache")


def resolve_directory(directory: str | None = None, workdir: str | None = None) -> str | None:
  """The cache folder to use, or None when the cache is switched off (see the module docstring)."""
  choice = directory if directory else os.environ.get(ENV_VAR, "")
  if choice.strip().lower() in DISABLED:
    return None
  if choice:
    return os.path.abspath(os.path.expanduser(choice))
  return jax.config.jax_compilation_cache_dir or default_directory(workdir)


def enable(directory: str | None = None, workdir: str | None = None) -> str | None:
  """Turns on the persistent compilation cache (before the first compilation of the process, or
  it re-points JAX's cache). Returns the folder, or None when switched off."""
  path = resolve_directory(directory, workdir)
  if path is None:
    log.info("persistent compilation cache off")
    return None
  configured = jax.config.jax_compilation_cache_dir
  if path == configured:  # already JAX's cache: its settings stay as they are
    log.info("persistent compilation cache: %s", path)
    return path
  os.makedirs(path, exist_ok=True)
  if configured is not None:
    jax_cache.reset_cache()  # JAX opens its cache once per process: make it read the new folder
  jax.config.update("jax_compilation_cache_dir", path)
  jax.config.update("jax_persistent_cache_min_compile_time_secs", MIN_COMPILE_SECONDS)
  log.info("persistent compilation cache: %s", path)
  return path


def disable() -> None:
  """Turns the persistent compilation cache off for the rest of the process."""
  jax_cache.reset_cache()
  jax.config.update("jax_compilation_cache_dir", None)
