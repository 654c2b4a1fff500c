"""The forward contract and the parameter accessors.

From a checkpoint to outputs in three lines:

    from tea_jax import inference
    config, variables = inference.load_variables("path/to/workdir")
    outputs = inference.forward(config, variables, batch)

`variables` is the flax variables dict {"params": trainable, "frozen": word vectors and positional
table}.
`batch` holds video (B, L, Dv) float32, video_mask (B, L), word_ids (B, W) int32, query_mask (B, W)
and, when the narrative merge or the paragraph branch is on, narrative (B, L, Dn).
"""

import functools
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from tea_jax import checkpointing, workdir
from tea_jax.errors import InputError
from tea_jax.model.config import ModelConfig
from tea_jax.model.tea import TEA

INPUT_KEYS = ("video", "video_mask", "word_ids", "query_mask", "narrative")


@functools.lru_cache(maxsize=16)
def _compiled(config: ModelConfig, train: bool):
  model = TEA(config)

  def apply(variables, batch, rng):
    rngs = {"dropout": rng} if train else None
    return model.apply(variables, batch, train=train, rngs=rngs)

  return jax.jit(apply)


def check_batch(config: ml_collections.ConfigDict, batch: dict[str, Any]) -> None:
  """Raises a ValueError naming the input whose shape does not fit the model config."""
  c = ModelConfig.from_config(config)
  needs_narrative = c.uses_narrative
  for key in INPUT_KEYS[:4] + (("narrative",) if needs_narrative else ()):
    if key not in batch:
      raise InputError(f"batch lacks {key!r}; forward needs {INPUT_KEYS[:4]}"
                       + (" and 'narrative'" if needs_narrative else ""))
  b, length, dv = np.shape(batch["video"])
  expect = {"video_mask": (b, length), "word_ids": (b, np.shape(batch["word_ids"])[-1]),
            "query_mask": np.shape(batch["word_ids"])}
  if needs_narrative:
    expect["narrative"] = (b, length, c.narrative_dim)
  for key, shape in expect.items():
    if tuple(np.shape(batch[key])) != tuple(shape):
      raise InputError(f"batch[{key!r}] has shape {np.shape(batch[key])}, expected {shape}")
  if dv != c.video_dim:
    raise InputError(f"batch['video'] has {dv} channels, config.model.video_dim is {c.video_dim}")
  words = np.shape(batch["word_ids"])[1]
  if max(length, words) > c.max_positions:
    raise InputError(f"L={length} or W={words} exceeds config.model.max_positions="
                     f"{c.max_positions}")


def forward(config: ml_collections.ConfigDict, variables: Any, batch: dict[str, Any], *,
            train: bool = False, rng: jax.Array | None = None) -> dict[str, jax.Array]:
  """Runs the jit-compiled model.

  Returns start_logits, end_logits, highlight (B, L); proposal_scores, proposal_mask (B, P);
  proposal_bounds (B, P, 2) inclusive snippet indices; start_prob, end_prob (B, L) the final span
  distributions (with the paragraph branch, (p_v + alpha p_c) / (1 + alpha)); and, with the
  paragraph branch, paragraph_start_logits / paragraph_end_logits.
  """
  c = ModelConfig.from_config(config)
  check_batch(c, batch)
  if train and rng is None:
    raise ValueError("forward(train=True) needs rng for dropout")
  inputs = {k: jnp.asarray(batch[k]) for k in INPUT_KEYS if k in batch}
  inputs["word_ids"] = inputs["word_ids"].astype(jnp.int32)
  return _compiled(c, train)(variables, inputs, rng)


def example_batch(config: ml_collections.ConfigDict, batch_size: int = 1, length: int = 16,
                  words: int = 4) -> dict[str, np.ndarray]:
  """A zero batch of the given shapes (for init and shape inference)."""
  c = ModelConfig.from_config(config)
  return {"video": np.zeros((batch_size, length, c.video_dim), np.float32),
          "video_mask": np.ones((batch_size, length), np.float32),
          "word_ids": np.ones((batch_size, words), np.int32),
          "query_mask": np.ones((batch_size, words), np.float32),
          "narrative": np.zeros((batch_size, length, c.narrative_dim), np.float32)}


def init_variables(config: ml_collections.ConfigDict, rng: jax.Array) -> Any:
  """Freshly initialised variables (EMB's init; word vectors zero until the data's are loaded)."""
  c = ModelConfig.from_config(config)
  return jax.jit(lambda r: TEA(c).init(r, example_batch(c), train=False))(rng)


def variable_shapes(config: ml_collections.ConfigDict) -> Any:
  """The variables' ShapeDtypeStructs, without computing anything."""
  c = ModelConfig.from_config(config)
  return jax.eval_shape(lambda r: TEA(c).init(r, example_batch(c), train=False),
                        jax.random.key(0))


def load_variables(folder: str, step: int | None = None
                   ) -> tuple[ml_collections.ConfigDict, Any]:
  """(config, variables) of a workdir's best checkpoint (or `step`), trained or written by
  tea_jax.import_emb."""
  config = workdir.read_config(folder)
  variables, _ = checkpointing.restore_variables(folder, step)
  return config, variables
