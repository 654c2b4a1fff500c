"""Evaluation numbers recomputed from scratch (docs/design.md section 11): every predictions line's
IoU from its predicted and true seconds, R1@{0.3, 0.5, 0.7} and mIoU from those IoUs, the true
seconds from the annotation files, the predicted seconds from snippet indices, and the indices
from the model's span distributions, for the evaluation that ends training and for `--mode eval`
(`evaluate_checkpoint`). Plain Python floats (float64) throughout."""

import json

import numpy as np
import pytest
from conftest import tiny_train_config

from data_prep.build_records import build_records
from tea_jax import checkpointing, evaluate, inference, train
from tea_jax.data.input_pipeline import Records
from tea_jax.data.schema import records_dir

SPLITS = {"test": "charades_sta_test.txt", "val": "charades_sta_val.txt",
          "test_ood": "charades_sta_test_ood.txt"}


def annotations(root, split):
  """[(video, start, end, sentence)] of a split file (`vid start end##sentence`), in file order."""
  pairs = []
  with open(root / SPLITS[split], encoding="utf-8") as f:
    for line in f:
      if line.strip():
        head, sentence = line.rstrip("\n").split("##", 1)
        vid, start, end = head.split()
        pairs.append((vid, float(start), float(end), sentence))
  return pairs


def durations(root):
  with open(root / "charades.json", encoding="utf-8") as f:
    return {vid: float(entry["duration"]) for vid, entry in json.load(f).items()}


def snippets(root, vid):
  """v_len: the video's feature rows, at most 128 (section 1)."""
  return min(np.load(root / "features" / f"{vid}.npy", mmap_mode="r").shape[0], 128)


def temporal_iou(pred_start, pred_end, true_start, true_end):
  inter = min(pred_end, true_end) - max(pred_start, true_start)
  union = max(pred_end, true_end) - min(pred_start, true_start)
  return max(inter, 0.0) / union


def summary(ious):
  n = len(ious)
  out = {f"r1@{m}": 100.0 * sum(1 for x in ious if x >= m) / n for m in (0.3, 0.5, 0.7)}
  out["miou"] = 100.0 * sum(ious) / n
  out["r1_sum_miou"] = out["r1@0.3"] + out["r1@0.5"] + out["r1@0.7"] + out["miou"]
  out["count"] = n
  return out


def check_split(root, workdir, split, reported):
  """Recomputes one split's predictions file and its metrics; returns {pair: (i, j)}."""
  lines = [json.loads(line) for line in
           (workdir / f"predictions_{split}.jsonl").read_text().splitlines()]
  pairs = annotations(root, split)
  seconds = durations(root)
  assert sorted(p["pair_index"] for p in lines) == list(range(len(pairs)))  # each pair once
  ious, spans = [], {}
  for p in lines:
    vid, start, end, sentence = pairs[p["pair_index"]]
    assert (p["video_id"], p["query"]) == (vid, sentence)
    d = seconds[vid]
    # The truth, clipped to the video (section 16); records keep seconds in float64.
    assert p["true_start"] == max(0.0, start) and p["true_end"] == min(end, d), p
    # Predicted seconds are snippet bounds: i d / v_len and (j + 1) d / v_len, in that order.
    v_len = snippets(root, vid)
    i, j = round(p["pred_start"] * v_len / d), round(p["pred_end"] * v_len / d) - 1
    assert 0 <= i <= j < v_len, p
    assert p["pred_start"] == i * d / v_len and p["pred_end"] == (j + 1) * d / v_len, p
    spans[p["pair_index"]] = (i, j)
    ious.append(temporal_iou(p["pred_start"], p["pred_end"], p["true_start"], p["true_end"]))
    assert abs(p["iou"] - ious[-1]) <= 1e-12, p
  want = summary(ious)
  assert set(reported) - {"step", "queries"} == set(want)  # plus where the numbers come from
  assert reported["queries"]["evaluated"] == len(lines)
  for key, value in want.items():
    assert abs(reported[key] - value) <= 1e-9, (split, key, reported[key], value)
  return spans


def decoded(config, variables, records, split):
  """{pair: (i, j)}: the best i <= j of p_s[i] p_e[j] over the model's outputs, by loops."""
  spans = {}
  for batch in records.eval_batches(split, config.eval_batch_size):
    out = inference.forward(config, variables, batch)
    start_prob, end_prob = np.asarray(out["start_prob"]), np.asarray(out["end_prob"])
    for b in np.nonzero(batch["valid"] > 0)[0]:
      length = int(batch["video_mask"][b].sum())
      best = None
      for i in range(length):
        for j in range(i, length):
          score = float(start_prob[b, i]) * float(end_prob[b, j])
          if best is None or score > best[0]:
            best = (score, i, j)
      spans[int(batch["pair_index"][b])] = best[1:]
  return spans


@pytest.fixture(scope="module")
def trained(train_data_root, tmp_path_factory):
  """A small model trained for two epochs (each evaluated on val) and evaluated on test."""
  workdir = tmp_path_factory.mktemp("evaluation") / "run"
  result = train.train_and_evaluate(tiny_train_config(train_data_root), str(workdir),
                                    progress=False)
  return workdir, result


def test_training_metrics_and_predictions_recomputed(train_data_root, trained):
  workdir, result = trained
  metrics = json.loads((workdir / "metrics.json").read_text())
  assert metrics["step"] == result["best"] and set(metrics["splits"]) == {"test"}
  check_split(train_data_root, workdir, "test", metrics["splits"]["test"])
  # A checkpoint's stored selection metrics are val's summary at that step.
  with checkpointing.manager(str(workdir), read_only=True) as mngr:
    stored = mngr.metrics(result["best"])
  assert set(stored["splits"]) == {"val"} and stored["step"] == result["best"]


def predicted_seconds(workdir, split):
  lines = (workdir / f"predictions_{split}.jsonl").read_text().splitlines()
  return {p["pair_index"]: (p["pred_start"], p["pred_end"]) for p in map(json.loads, lines)}


def altered_benchmark(root, out, val_predictions):
  """A copy of the benchmark whose val truths are the first half of each predicted span (IoU
  exactly 0.5: R1@0.5 counts IoU >= 0.5) and whose test_ood videos last 1.37 times longer than
  their snippets (seconds that no float32 holds exactly)."""
  out.mkdir()
  for path in root.iterdir():
    if not path.name.startswith(("records", "cache")):  # built again from the altered files
      (out / path.name).symlink_to(path)
  seconds = durations(root)
  lines = []
  for index, (vid, _, _, sentence) in enumerate(annotations(root, "val")):
    start, end = val_predictions[index]
    lines.append(f"{vid} {start!r} {start + (end - start) / 2!r}##{sentence}\n")
  (out / SPLITS["val"]).unlink()
  (out / SPLITS["val"]).write_text("".join(lines))
  lines = []
  for vid, start, end, sentence in annotations(root, "test_ood"):
    seconds[vid] *= 1.37
    lines.append(f"{vid} {start * 1.37!r} {end * 1.37!r}##{sentence}\n")
  (out / SPLITS["test_ood"]).unlink()
  (out / SPLITS["test_ood"]).write_text("".join(lines))
  (out / "charades.json").unlink()
  (out / "charades.json").write_text(json.dumps(
      {vid: {"duration": d} for vid, d in seconds.items()}))
  config = tiny_train_config(out)
  build_records(config, progress=False)
  return config


def test_eval_mode_metrics_predictions_and_decoding_recomputed(train_data_root, trained,
                                                                 tmp_path):
  workdir, result = trained
  with checkpointing.manager(str(workdir), read_only=True) as mngr:
    steps = [s for s in mngr.all_steps() if s != result["best"]]
  step = steps[0]  # another checkpoint than the one the training evaluated
  config = tiny_train_config(train_data_root)
  config.data.eval_splits = ("val",)
  evaluate.evaluate_checkpoint(config, str(workdir), step=step, progress=False)
  root = tmp_path / "altered"
  config = altered_benchmark(train_data_root, root, predicted_seconds(workdir, "val"))
  config.data.eval_splits = tuple(SPLITS)
  reported = evaluate.evaluate_checkpoint(config, str(workdir), step=step, progress=False)
  metrics = json.loads((workdir / "metrics.json").read_text())
  assert metrics["step"] == step and metrics["splits"] == reported
  variables, _ = checkpointing.restore_variables(str(workdir), step)
  records = Records(records_dir(config.data), config.data)
  for split in SPLITS:
    spans = check_split(root, workdir, split, reported[split])
    assert spans == decoded(config, variables, records, split), split
  ious = [json.loads(line)["iou"] for line in
          (workdir / "predictions_val.jsonl").read_text().splitlines()]
  assert ious == [0.5] * len(ious)  # every val pair sits exactly on the R1@0.5 threshold
