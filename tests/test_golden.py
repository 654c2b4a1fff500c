"""Parity with the EMB PyTorch reference on ../shared/spec/golden_emb (eval mode, 1e-4 relative)."""

import numpy as np
import pytest
from conftest import shared_path

from tea_jax import import_emb, inference

CASES = ("full", "padded", "long")
INPUTS = ("video", "video_mask", "word_ids", "query_mask")


@pytest.fixture(scope="module")
def golden():
  folder = shared_path("spec", "golden_emb")
  config, params = import_emb.load(str(folder / "model_best.pth.tar"))
  return config, params, np.load(folder / "cases.npz")


def rel_err(ours, ref):
  return np.abs(np.asarray(ours, np.float64) - ref) / np.maximum(1.0, np.abs(ref))


@pytest.mark.parametrize("case", CASES)
def test_outputs_match_reference(golden, case):
  config, params, cases = golden
  batch = {k: cases[f"{case}/{k}"] for k in INPUTS}
  out = inference.forward(config, params, batch)
  valid = batch["video_mask"] > 0
  for key in ("start_logits", "end_logits", "highlight"):
    err = rel_err(out[key], cases[f"{case}/{key}"])[valid]
    assert err.max() <= 1e-4, f"{case}/{key}: max relative error {err.max():.2e}"
  np.testing.assert_array_equal(np.asarray(out["proposal_mask"]), cases[f"{case}/proposal_mask"])
  pvalid = cases[f"{case}/proposal_mask"] > 0
  np.testing.assert_array_equal(np.asarray(out["proposal_bounds"])[pvalid],
                                cases[f"{case}/proposal_bounds"][pvalid])
  err = rel_err(out["proposal_scores"], cases[f"{case}/proposal_scores"])
  assert err.max() <= 1e-4, f"{case}/proposal_scores: max relative error {err.max():.2e}"


def test_padded_case_has_a_length_one_sample(golden):
  # Guards the fixture itself: the padding rules are only exercised if lengths differ.
  _, _, cases = golden
  lengths = cases["padded/video_mask"].sum(1)
  assert lengths.min() == 1 and len(set(lengths)) > 1
