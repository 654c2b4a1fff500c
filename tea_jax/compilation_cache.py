"""JAX's persistent compilation cache for tea_jax runs: the train and eval steps compile once per
machine and configuration, and every later run (a resumed one, the final evaluation in a new
process, another ablation with the same shapes) loads them in seconds.

Where the cache lives, first match:
  1. the config's `compilation_cache`: a folder, or "off";
  2. JAX's own setting, if the process has one (JAX_COMPILATION_CACHE_DIR), left as it is;
  3. `.jax_cache` beside the run's workdir (shared by the runs of one parent folder).

The cache holds compiled executables that JAX loads and runs: like any code folder it must only be
writable by people you trust.
"""

import logging
import os

import jax
from jax.experimental.compilation_cache import compilation_cache as jax_cache

log = logging.getLogger(__name__)

DISABLED = ("off", "none", "false", "0")
# Programs compiling faster than this are not worth a file (JAX's default is 1 s).
MIN_COMPILE_SECONDS = 1.0


def resolve_directory(directory: str | None = None, workdir: str | None = None) -> str | None:
  """The cache folder to use, or None when the cache is off (see the module docstring)."""
  if directory:
    if directory.strip().lower() in DISABLED:
      return None
    return os.path.abspath(os.path.expanduser(directory))
  if jax.config.jax_compilation_cache_dir:
    return jax.config.jax_compilation_cache_dir
  if workdir:
    return os.path.join(os.path.dirname(os.path.abspath(workdir)), ".jax_cache")
  return None


def enable(directory: str | None = None, workdir: str | None = None) -> str | None:
  """Turns on the persistent compilation cache (before the first compilation of the process, or
  it re-points JAX's cache). Returns the folder, or None when it is off."""
  path = resolve_directory(directory, workdir)
  configured = jax.config.jax_compilation_cache_dir
  if path is None or path == configured:  # off, or already JAX's cache with its own settings
    log.info("persistent compilation cache: %s", path or "off")
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
