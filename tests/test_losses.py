"""Losses of docs/design.md section 10: hand-worked numpy cases and the EMB reference's golden values."""

import json

import jax
import numpy as np
import pytest
from conftest import shared_path

from tea_jax import import_emb, inference, losses
from tea_jax.model.config import ModelConfig
from tea_jax.model.tea import TEA


def np_iou(a, b):
  inter = max(min(a[1], b[1]) - max(a[0], b[0]), 0.0)
  return inter / max(max(a[1], b[1]) - min(a[0], b[0]), 1e-5)


def np_bce(p, y):
  return -(y * max(np.log(p) if p > 0 else -np.inf, -100)
           + (1 - y) * max(np.log(1 - p) if p < 1 else -np.inf, -100))


def np_total_loss(out, batch, thr):
  """Loop-per-sample transcription of docs/design.md section 10 (highlight end rule "min")."""
  b = len(batch["start_label"])
  vmr_s, vmr_e, hl_num, hl_den, rank_num, rank_den = [], [], 0.0, 0.0, 0.0, 0.0
  for i in range(b):
    s, e = int(batch["start_label"][i]), int(batch["end_label"][i])
    v_len = int(batch["video_mask"][i].sum())
    bounds, scores, pmask = out["proposal_bounds"][i], out["proposal_scores"][i], out["proposal_mask"][i]
    best, best_score = None, -np.inf
    for p in range(len(scores)):
      if pmask[p] and np_iou((bounds[p, 0], bounds[p, 1] + 1), (s, e + 1)) >= thr:
        if scores[p] > best_score:
          best, best_score = p, scores[p]
    ps, pe = (bounds[best, 0], bounds[best, 1] + 1) if best is not None else (s, e + 1)
    vmr_s.append(-np.log(out["start_prob"][i][min(s, ps):max(s, ps) + 1].sum()))
    vmr_e.append(-np.log(out["end_prob"][i][min(e, pe):max(e, pe) + 1].sum()))
    lo, hi = min(s, ps), min(e, pe)
    ext = int(np.round(np.float32(hi - lo + 1) * np.float32(0.1)))
    lo, hi = max(0, lo - ext), min(v_len - 1, hi + ext)
    for t in range(v_len):
      y = 1.0 if lo <= t <= hi else 0.0
      hl_num += (2.0 if y else 1.0) * np_bce(out["highlight"][i][t], y)
      hl_den += 1
    unit = batch["duration"][i] / v_len
    for p in range(len(scores)):
      if pmask[p]:
        iou = np_iou((bounds[p, 0] * unit, (bounds[p, 1] + 1) * unit), (s * unit, (e + 1) * unit))
        rank_num += np_bce(scores[p], np.clip((iou - 0.3) / 0.4, 0, 1))
        rank_den += 1
  vmr = np.mean(vmr_s) + np.mean(vmr_e)
  hl, rank = hl_num / hl_den, rank_num / rank_den
  return vmr + 5 * hl + rank, (vmr, hl, rank)


def test_threshold_schedule_matches_the_paper_curve():
  thr = losses.numpy_threshold_schedule(100)
  np.testing.assert_allclose(thr[[0, 40, 50, 60, 80]], [1.0, 0.9404, 0.75, 0.5596, 0.5012],
                             atol=1e-4)


def hand_outputs():
  """Two samples, N = 2 cells (4 proposals), L = 12 snippets."""
  start_prob = np.full((2, 12), 1 / 12, np.float32)
  start_prob[1] = np.linspace(1, 2, 12) / np.linspace(1, 2, 12).sum()
  return {
      "start_prob": start_prob,
      "end_prob": start_prob[::-1].copy(),
      "highlight": np.linspace(0.05, 0.95, 24, dtype=np.float32).reshape(2, 12),
      "proposal_bounds": np.array([[[0, 7], [0, 11], [0, 0], [8, 11]],
                                   [[0, 7], [0, 9], [0, 0], [8, 9]]], np.int32),
      "proposal_scores": np.array([[0.9, 0.2, 0.0, 0.6], [0.3, 0.8, 0.0, 0.1]], np.float32),
      "proposal_mask": np.array([[1, 1, 0, 1], [1, 1, 0, 1]], np.float32),
  }


def hand_batch():
  mask = np.ones((2, 12), np.float32)
  mask[1, 10:] = 0
  return {"start_label": np.array([1, 8], np.int32), "end_label": np.array([7, 9], np.int32),
          "duration": np.array([24.0, 30.0], np.float32), "video_mask": mask}


def test_pseudo_span_selection_and_fall_back():
  out, batch = hand_outputs(), hand_batch()
  s, e = batch["start_label"], batch["end_label"]
  # thr 0.5: sample 0 candidates are [0, 8) (IoU 7/8) and [0, 12) (7/12): best score -> [0, 8).
  # Sample 1 ([8, 10)): only [8, 10) qualifies (IoU 1) -> (8, 10).
  ps, pe = losses.pseudo_span(out, s, e, 0.5)
  np.testing.assert_array_equal(np.asarray(ps), [0, 8])
  np.testing.assert_array_equal(np.asarray(pe), [8, 10])
  # thr 0.95: sample 0 has no candidate -> falls back to (s, e + 1) = (1, 8).
  ps, pe = losses.pseudo_span(out, s, e, 0.95)
  np.testing.assert_array_equal(np.asarray(ps), [1, 8])
  np.testing.assert_array_equal(np.asarray(pe), [8, 10])


def test_span_nll_by_hand():
  out, batch = hand_outputs(), hand_batch()
  _, parts = losses.total_loss(loss_cfg(), out, batch, 0.5)
  # Sample 0: start span [min(1, 0), max(1, 0)] = 2 snippets of 1/12; end span [7, 8].
  # Sample 1: start [8, 8], end [9, 10].
  p1 = out["start_prob"][1]
  start = (-np.log(2 / 12) - np.log(p1[8])) / 2
  end = (-np.log(out["end_prob"][0][7:9].sum()) - np.log(out["end_prob"][1][9:11].sum())) / 2
  np.testing.assert_allclose(float(parts["vmr"]), start + end, rtol=1e-6)


@pytest.mark.parametrize("threshold", [0.5, 0.95])
def test_total_loss_matches_numpy_transcription(threshold):
  out, batch = hand_outputs(), hand_batch()
  total, parts = losses.total_loss(loss_cfg(), out, batch, threshold)
  ref_total, (vmr, hl, rank) = np_total_loss(out, batch, threshold)
  np.testing.assert_allclose(float(parts["vmr"]), vmr, rtol=1e-5)
  np.testing.assert_allclose(float(parts["highlight"]), hl, rtol=1e-5)
  np.testing.assert_allclose(float(parts["rank"]), rank, rtol=1e-5)
  np.testing.assert_allclose(float(total), ref_total, rtol=1e-5)


@pytest.mark.parametrize("length,ext", [(5, 0), (10, 1), (15, 2), (25, 2), (35, 4)])
def test_highlight_extension_rounds_half_to_even(length, ext):
  # Region [a, b] of `length` snippets in a 64-snippet video; ext = round_half_even(0.1 length).
  mask = np.ones((1, 64), np.float32)
  h = np.full((1, 64), 0.5, np.float32)
  s = np.array([20], np.int32)
  e = s + length - 1
  got = float(losses.highlight_loss(h, mask, s, e, s, e + 1, loss_cfg().loss))
  positives = length + 2 * ext
  expected = (2 * positives * np.log(2) + (64 - positives) * np.log(2)) / 64
  np.testing.assert_allclose(got, expected, rtol=1e-6)


def test_bce_has_finite_gradients_at_zero_and_one():
  grads = jax.grad(lambda p: losses.bce(p, np.array([0.2, 1.0, 0.0], np.float32)).sum())(
      np.array([0.0, 1.0, 0.0], np.float32))
  assert np.all(np.isfinite(np.asarray(grads)))
  np.testing.assert_allclose(np.asarray(losses.bce(np.float32(0.0), np.float32(1.0))), 100.0)


def loss_cfg():
  import ml_collections
  return ml_collections.ConfigDict({"loss": losses.loss_defaults().to_dict()})


@pytest.fixture(scope="module")
def golden():
  folder = shared_path("spec", "golden_emb")
  config, params = import_emb.load(str(folder / "model_best.pth.tar"))
  with open(folder / "grads.json", encoding="utf-8") as f:
    grads = json.load(f)
  return config, params, np.load(folder / "cases.npz"), grads


def case_batch(cases, case):
  keys = ("video", "video_mask", "word_ids", "query_mask", "start_label", "end_label", "duration")
  return {k: cases[f"{case}/{k}"] for k in keys}


@pytest.mark.parametrize("case", ["full", "padded", "long"])
def test_golden_losses_and_gradient_norms(golden, case):
  config, params, cases, grads = golden
  batch = case_batch(cases, case)
  threshold = cases[f"{case}/threshold"]
  out = inference.forward(config, params, batch)
  total, parts = losses.total_loss(config, out, batch, threshold)
  for name, value in dict(parts, total=total).items():
    ref = float(cases[f"{case}/loss_{name}"])
    assert abs(float(value) - ref) <= 1e-4 * max(1.0, abs(ref)), (case, name, float(value), ref)

  model = TEA(ModelConfig.from_config(config))

  def loss_fn(p):
    o = model.apply({"params": p, "frozen": params["frozen"]}, batch, train=False)
    return losses.total_loss(config, o, batch, threshold)[0]

  ours = jax.jit(jax.grad(loss_fn))(params["params"])
  rules = import_emb.emb_rules()
  ref = grads[case]
  assert set(ref["per_parameter_l2"]) == {k for k, r in rules.items() if r[0] == "params"}
  for key, ref_norm in ref["per_parameter_l2"].items():
    node = ours
    for part in rules[key][1]:
      node = node[part]
    norm = float(np.linalg.norm(np.asarray(node, np.float64)))
    # Gradients that are zero analytically (attention key biases: softmax is shift-invariant; the
    # end head's output bias) come out as float noise ~1e-8 on both sides: the 1e-6 floor.
    assert abs(norm - ref_norm) <= 1e-3 * abs(ref_norm) + 1e-6, (case, key, norm, ref_norm)
  global_norm = np.sqrt(sum(np.sum(np.asarray(g, np.float64) ** 2)
                            for g in jax.tree_util.tree_leaves(ours)))
  np.testing.assert_allclose(global_norm, ref["global_l2"], rtol=1e-4)
