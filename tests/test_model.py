"""Whole-model behaviour: padding invariance, dropout only in training, TEA variants, errors."""

import jax
import numpy as np
import pytest
from conftest import random_batch, tiny_model_config

from tea_jax import inference


@pytest.fixture(scope="module")
def emb():
  config = tiny_model_config()
  return config, inference.init_variables(config, jax.random.key(0))


def pad_batch(batch, length, words):
  """Pads every input of a batch to (length, words) with zeros (masks 0 there)."""
  out = {}
  for key, value in batch.items():
    axis_len = words if key in ("word_ids", "query_mask") else length
    pad = [(0, 0)] * value.ndim
    pad[1] = (0, axis_len - value.shape[1])
    out[key] = np.pad(value, pad)
  return out


def test_logits_and_highlight_do_not_depend_on_padding(emb, rng):
  config, params = emb
  batch = random_batch(rng, config, lengths=[11, 6], words=[5, 3])
  ref = inference.forward(config, params, batch)
  padded = inference.forward(config, params, pad_batch(batch, 27, 9))
  mask = batch["video_mask"] > 0
  for key in ("start_logits", "end_logits", "highlight"):
    np.testing.assert_allclose(np.asarray(padded[key])[:, :11][mask], np.asarray(ref[key])[mask],
                               rtol=1e-5, atol=1e-5)
  # Proposal scores DO change with the padded length (docs/design.md section 4): padded frames reach the
  # proposal cells with -1e30 instead of the -1e-30 tail value. This documents the reference's quirk.
  n_ref = int(round(ref["proposal_scores"].shape[1] ** 0.5))
  n_pad = int(round(padded["proposal_scores"].shape[1] ** 0.5))
  ref_map = np.asarray(ref["proposal_scores"]).reshape(2, n_ref, n_ref)
  pad_map = np.asarray(padded["proposal_scores"]).reshape(2, n_pad, n_pad)[:, :n_ref, :n_ref]
  assert np.abs(ref_map - pad_map).max() > 1e-6


def test_dropout_only_in_training(emb, rng):
  config, params = emb
  batch = random_batch(rng, config, lengths=[9, 9], words=[4, 4])
  a = inference.forward(config, params, batch)
  b = inference.forward(config, params, batch)
  np.testing.assert_array_equal(np.asarray(a["start_logits"]), np.asarray(b["start_logits"]))
  t1 = inference.forward(config, params, batch, train=True, rng=jax.random.key(1))
  t2 = inference.forward(config, params, batch, train=True, rng=jax.random.key(2))
  t1_again = inference.forward(config, params, batch, train=True, rng=jax.random.key(1))
  assert np.abs(np.asarray(t1["start_logits"]) - np.asarray(t2["start_logits"])).max() > 1e-4
  np.testing.assert_array_equal(np.asarray(t1["start_logits"]),
                                np.asarray(t1_again["start_logits"]))
  with pytest.raises(ValueError, match="rng"):
    inference.forward(config, params, batch, train=True)


@pytest.mark.parametrize("merge,paragraph", [("concat", True), ("add", False),
                                             ("attention", True), ("none", True)])
def test_tea_variants(rng, merge, paragraph):
  config = tiny_model_config(merge=merge, paragraph_branch=paragraph, alpha=0.25)
  params = inference.init_variables(config, jax.random.key(0))
  batch = random_batch(rng, config, lengths=[10, 4], words=[3, 5])
  out = inference.forward(config, params, batch)
  assert out["start_logits"].shape == (2, 10)
  assert out["proposal_scores"].shape == out["proposal_mask"].shape == (2, 4)
  assert out["proposal_bounds"].shape == (2, 4, 2)
  start_v = np.asarray(jax.nn.softmax(out["start_logits"], -1))
  if paragraph:
    start_c = np.asarray(jax.nn.softmax(out["paragraph_start_logits"], -1))
    expected = (start_v + 0.25 * start_c) / 1.25
  else:
    expected = start_v
  np.testing.assert_allclose(np.asarray(out["start_prob"]), expected, rtol=1e-5, atol=1e-7)
  np.testing.assert_allclose(np.asarray(out["start_prob"]).sum(-1), 1.0, rtol=1e-5)
  # The narrative must matter for every TEA variant.
  changed = dict(batch, narrative=batch["narrative"] + 1.0)
  out2 = inference.forward(config, params, changed)
  assert np.abs(np.asarray(out2["start_prob"]) - np.asarray(out["start_prob"])).max() > 1e-6


def test_plain_emb_ignores_narrative_and_does_not_need_it(emb, rng):
  config, params = emb
  batch = random_batch(rng, config, lengths=[8], words=[3])
  out = inference.forward(config, params, batch)
  del batch["narrative"]
  out2 = inference.forward(config, params, batch)
  np.testing.assert_array_equal(np.asarray(out["start_logits"]), np.asarray(out2["start_logits"]))
  assert "narrative_projection" not in params["params"]


def test_bad_batches_name_the_input(emb, rng):
  config, params = emb
  batch = random_batch(rng, config, lengths=[8], words=[3])
  with pytest.raises(ValueError, match="video_dim"):
    inference.forward(config, params, dict(batch, video=np.zeros((1, 8, 5), np.float32)))
  with pytest.raises(ValueError, match="video_mask"):
    inference.forward(config, params, dict(batch, video_mask=np.ones((1, 7), np.float32)))
  with pytest.raises(ValueError, match="max_positions"):
    long = random_batch(rng, config, lengths=[70], words=[3])
    inference.forward(config, params, long)
  tea = tiny_model_config(merge="concat")
  with pytest.raises(ValueError, match="narrative"):
    inference.forward(tea, params, {k: v for k, v in batch.items() if k != "narrative"})


def test_experiment_config_with_model_field_is_accepted(emb, rng):
  import ml_collections
  config, params = emb
  experiment = ml_collections.ConfigDict({"model": config.to_dict(), "batch_size": 2})
  batch = random_batch(rng, config, lengths=[5], words=[2])
  a = inference.forward(experiment, params, batch)
  b = inference.forward(config, params, batch)
  np.testing.assert_array_equal(np.asarray(a["end_logits"]), np.asarray(b["end_logits"]))
