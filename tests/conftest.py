"""Shared test helpers: full-precision matmuls, the ../shared folder, tiny model configs."""

import json
import os
import pathlib

import jax
import numpy as np
import pytest
from jax.experimental.compilation_cache import compilation_cache as jax_cache

# Parity tests compare float32 to 1e-4..1e-6: no reduced-precision matmuls (TF32 on GPUs).
jax.config.update("jax_default_matmul_precision", "highest")

REPO = pathlib.Path(__file__).resolve().parents[1]
SHARED = pathlib.Path(os.environ.get("TEA_SHARED", REPO.parent / "shared"))


def shared_path(*parts: str) -> pathlib.Path:
  """A path under ../shared, or a loud skip when the folder is not beside the checkout."""
  path = SHARED.joinpath(*parts)
  if not path.exists():
    pytest.skip(f"SKIPPED (no shared data): {path} is absent; put the project's shared/ folder "
                f"beside the checkout or set TEA_SHARED to run this test")
  return path


@pytest.fixture(scope="session", autouse=True)
def compilation_cache(tmp_path_factory):
  """One persistent compilation cache for the whole run, shared with the subprocesses the tests
  start: the many small trainings compile the same few programs (as a user's reruns do, see
  tea_jax/compilation_cache.py), and each is compiled once. A cache the caller set is kept."""
  if not os.environ.get("JAX_COMPILATION_CACHE_DIR"):
    os.environ["JAX_COMPILATION_CACHE_DIR"] = str(tmp_path_factory.mktemp("jax_cache"))
  jax.config.update("jax_compilation_cache_dir", os.environ["JAX_COMPILATION_CACHE_DIR"])
  jax_cache.reset_cache()  # in case something compiled (and JAX looked for a cache) at collection
  yield os.environ["JAX_COMPILATION_CACHE_DIR"]


@pytest.fixture(scope="module")
def env(compilation_cache):
  """The environment of the training subprocesses the kill-and-resume tests start: the repository
  and tests/ importable, and the session's persistent compilation cache, so that each restart
  loads the compiled step."""
  return dict(os.environ, PYTHONPATH=f"{REPO}:{REPO / 'tests'}",
              JAX_COMPILATION_CACHE_DIR=compilation_cache,
              JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0",
              JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES="0")


def pytest_terminal_summary(terminalreporter):
  skipped = [r for r in terminalreporter.stats.get("skipped", []) if "no shared data" in str(r.longrepr)]
  if skipped:
    terminalreporter.write_sep("!", f"{len(skipped)} tests SKIPPED: shared data absent ({SHARED})",
                               yellow=True, bold=True)


@pytest.fixture(scope="module")
def train_data_root(tmp_path_factory):
  """A small synthetic benchmark (24 videos, 256-d features) with its records, for the training
  tests (one per test module)."""
  from data_prep import synthetic
  from data_prep.build_records import build_records
  root = tmp_path_factory.mktemp("train_data")
  synthetic.generate(str(root), videos=24, seed=1, video_dim=256, word_dim=50)
  build_records(tiny_train_config(root), progress=False)
  return root


def tiny_model_config(**overrides):
  """A small model config so that tests compile and run in seconds."""
  from tea_jax.model.config import model_defaults
  c = model_defaults()
  c.update(hidden=16, num_heads=2, video_dim=12, word_dim=6, narrative_dim=6, vocab_size=20,
           max_positions=64)
  c.update(overrides)
  return c


def random_batch(rng: np.random.Generator, config, lengths, words, length=None, num_words=None):
  """A padded batch with the given valid lengths (video) and word counts (query)."""
  length = length or max(lengths)
  num_words = num_words or max(words)
  b = len(lengths)
  video_mask = (np.arange(length)[None] < np.asarray(lengths)[:, None]).astype(np.float32)
  query_mask = (np.arange(num_words)[None] < np.asarray(words)[:, None]).astype(np.float32)
  return {
      "video": (rng.normal(size=(b, length, config.video_dim)) * video_mask[..., None]
                ).astype(np.float32),
      "video_mask": video_mask,
      "word_ids": (rng.integers(1, config.vocab_size, (b, num_words)) * query_mask
                   ).astype(np.int32),
      "query_mask": query_mask,
      "narrative": (rng.normal(size=(b, length, config.narrative_dim)) * video_mask[..., None]
                    ).astype(np.float32),
  }


@pytest.fixture
def rng():
  return np.random.default_rng(0)


@pytest.fixture(scope="session")
def llava_dir(tmp_path_factory):
  """A tiny random LLaVA-1.5 saved as a local Hugging Face directory (built once per session)."""
  from data_prep.testing import random_mllm  # pylint: disable=import-outside-toplevel
  model, processor = random_mllm.build_llava("tiny")
  return random_mllm.save(model, processor, str(tmp_path_factory.mktemp("llava")))


def tiny_train_config(root, **overrides):
  """The demo config with a tiny EMB model on the data under `root`: trains in seconds."""
  from configs import demo  # pylint: disable=import-outside-toplevel
  config = demo.get_config()
  config.unlock()
  config.data.root = str(root)
  config.model.update(hidden=16, num_heads=2, merge="none", paragraph_branch=False)
  config.update(batch_size=8, eval_batch_size=8, num_epochs=2, log_every_steps=1)
  config.data.eval_splits = ("test",)
  config.update(overrides)
  return config


def run_outcome(workdir) -> dict:
  """What a finished training run leaves: metrics, test predictions and the best checkpoint's
  variables (the kill-and-resume tests compare it with an uninterrupted run's)."""
  from tea_jax import checkpointing  # pylint: disable=import-outside-toplevel
  metrics = json.loads((workdir / "metrics.json").read_text())
  variables, step = checkpointing.restore_variables(str(workdir))
  assert step == metrics["step"]
  return {"metrics": metrics, "predictions": (workdir / "predictions_test.jsonl").read_text(),
          "variables": [np.asarray(x) for x in jax.tree_util.tree_leaves(variables)]}


def assert_same_outcome(got: dict, want: dict) -> None:
  """Two run_outcome()s equal: metrics and predictions to the byte, variables bit for bit."""
  assert got["metrics"] == want["metrics"] and got["predictions"] == want["predictions"]
  for x, y in zip(got["variables"], want["variables"], strict=True):
    np.testing.assert_array_equal(x, y)


def gpu_path_config():
  """A tiny TEA experiment for comparing the GPU configuration of a train step with the CPU one:
  no dropout, because the batched branches of the GPU configuration draw their masks from one
  split key, so with dropout the two would compute different functions."""
  from configs import common  # pylint: disable=import-outside-toplevel
  config = common.base_config()
  config.model = tiny_model_config(merge="concat", paragraph_branch=True, dropout=0.0)
  config.batch_size = 2
  return config
