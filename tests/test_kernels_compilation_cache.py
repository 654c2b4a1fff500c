"""The persistent compilation cache: where it lives, and that a recompilation in a fresh process
state is served from it (tea_jax/compilation_cache.py)."""

import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from tea_jax import compilation_cache


@pytest.fixture
def no_env():
  saved = (jax.config.jax_compilation_cache_dir,
           jax.config.jax_persistent_cache_min_compile_time_secs)
  compilation_cache.disable()  # as a process where JAX has no cache of its own
  yield
  compilation_cache.disable()
  jax.config.update("jax_compilation_cache_dir", saved[0])  # the test session's cache
  jax.config.update("jax_persistent_cache_min_compile_time_secs", saved[1])


def test_directory_precedence(no_env, tmp_path):
  runs = tmp_path / "runs"
  runs.mkdir()
  workdir = str(runs / "tea_charades")
  assert compilation_cache.resolve_directory(None, workdir) == str(runs / ".jax_cache")
  assert compilation_cache.resolve_directory(None, None) is None
  assert compilation_cache.resolve_directory(str(tmp_path / "explicit"), workdir) == str(
      tmp_path / "explicit")
  for off in ("off", "OFF", "none"):
    assert compilation_cache.resolve_directory(off, workdir) is None
  assert compilation_cache.enable("off", workdir) is None
  assert jax.config.jax_compilation_cache_dir is None
  assert compilation_cache.enable(None, workdir) == str(runs / ".jax_cache")
  assert os.path.isdir(runs / ".jax_cache")


def test_a_recompilation_is_read_from_the_cache(no_env, tmp_path):
  path = compilation_cache.enable(str(tmp_path / "cache"))
  jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)

  @jax.jit
  def program(x):
    return jnp.tanh(x @ x.T).sum() * 3.0 + 1.0

  x = np.arange(12, dtype=np.float32).reshape(3, 4) / 10
  expected = float(program(x))
  written = sorted(os.listdir(path))
  assert written, "the first compilation wrote nothing to the cache"
  jax.clear_caches()  # as a new process: nothing compiled in memory
  hits = []
  listener = lambda event, **kw: hits.append(event)
  jax.monitoring.register_event_listener(listener)
  try:
    assert float(program(x)) == expected
  finally:
    jax.monitoring.unregister_event_listener(listener)
  assert "/jax/compilation_cache/cache_hits" in hits
  assert sorted(os.listdir(path)) == written


def test_a_cache_jax_already_has_is_kept(no_env, tmp_path):
  # JAX_COMPILATION_CACHE_DIR (or the user's own jax.config) wins over the default beside the
  # workdir; an explicit config value still wins over it.
  jax.config.update("jax_compilation_cache_dir", str(tmp_path / "users"))
  workdir = str(tmp_path / "runs" / "tea")
  assert compilation_cache.enable(None, workdir) == str(tmp_path / "users")
  assert jax.config.jax_compilation_cache_dir == str(tmp_path / "users")
  assert compilation_cache.enable(str(tmp_path / "explicit"), workdir) == str(tmp_path / "explicit")
  assert jax.config.jax_compilation_cache_dir == str(tmp_path / "explicit")
