"""The two evaluation protocols (configs/common.py: protocol), evaluations.jsonl, and every annotated
pair counted (data.missing). The reference protocol is checked against EMB's loop worked by hand:
when it evaluates, which evaluation each split reports, and the reported numbers recomputed from
the predictions files."""

import json
import math
import os
import signal
import subprocess
import sys

import pytest
from conftest import REPO, tiny_train_config

from configs import demo
from data_prep import synthetic
from data_prep.build_records import build_records
from tea_jax import evaluate, train, workdir
from tea_jax.data.input_pipeline import Records
from tea_jax.data.schema import records_dir
from tea_jax.errors import InputError

METRICS = ("r1@0.3", "r1@0.5", "r1@0.7", "miou")


def reference_config(root):
  """Two epochs of the tiny model, EMB's protocol, two reported splits."""
  config = tiny_train_config(root, protocol="reference", num_epochs=2)
  config.data.eval_splits = ("test", "val")
  return config


@pytest.fixture(scope="module")
def reference_run(train_data_root, tmp_path_factory):
  config = reference_config(train_data_root)
  folder = tmp_path_factory.mktemp("reference") / "run"
  result = train.train_and_evaluate(config, str(folder), progress=False)
  return config, folder, result


def steps_per_epoch(config) -> int:
  records = Records(records_dir(config.data), config.data)
  return math.ceil(records.size(config.data.train_split) / config.batch_size)


def recomputed(predictions: list[dict]) -> dict:
  """R1@m and mIoU (percent) from each line's predicted and true seconds, in plain Python."""
  ious = []
  for p in predictions:
    inter = min(p["pred_end"], p["true_end"]) - max(p["pred_start"], p["true_start"])
    union = max(p["pred_end"], p["true_end"]) - min(p["pred_start"], p["true_start"])
    ious.append(max(inter, 0.0) / union)
  out = {f"r1@{m}": 100.0 * sum(i >= m for i in ious) / len(ious) for m in (0.3, 0.5, 0.7)}
  out["miou"] = 100.0 * sum(ious) / len(ious)
  return out


def test_the_reference_protocol_evaluates_when_embs_loop_did(reference_run):
  config, folder, result = reference_run
  n = steps_per_epoch(config)
  total = config.num_epochs * n
  assert result["step"] == total
  # EMB's main.py: eval_period = num_train_batches // 2; evaluate when global_step % eval_period
  # == 0 or global_step % num_train_batches == 0, counting steps from 1.
  expected = [k for k in range(1, total + 1) if k % (n // 2) == 0 or k % n == 0]
  lines = workdir.read_evaluations(str(folder))
  assert [(line["step"], line["split"]) for line in lines] == [
      (k, split) for k in expected for split in ("test", "val")]
  assert all(line["protocol"] == "reference" for line in lines)
  assert [line["epoch"] for line in lines[::2]] == [round(k / n, 6) for k in expected]


def test_each_split_reports_its_own_best_evaluation_recomputable_from_its_predictions(
    reference_run):
  config, folder, _ = reference_run
  metrics = workdir.read_metrics(str(folder))
  assert metrics["protocol"] == "reference" and "optimistic" in metrics["selection"]
  lines = workdir.read_evaluations(str(folder))
  for split in config.data.eval_splits:
    of_split = [line for line in lines if line["split"] == split]
    # EMB keeps an evaluation when its sum beats the best so far (strictly): the first best wins.
    best = of_split[0]
    for line in of_split[1:]:
      if sum(line[m] for m in METRICS) > sum(best[m] for m in METRICS):
        best = line
    reported = metrics["splits"][split]
    assert reported["step"] == best["step"]
    for m in METRICS:
      assert reported[m] == pytest.approx(best[m], abs=1e-9)
    predictions = workdir.read_predictions(str(folder), split)
    assert len(predictions) == reported["count"] == reported["queries"]["evaluated"]
    assert {p["step"] for p in predictions} == {best["step"]}
    assert {p["protocol"] for p in predictions} == {"reference"}
    again = recomputed(predictions)
    for m in METRICS:
      assert again[m] == pytest.approx(reported[m], abs=1e-9), (split, m)


def test_evaluating_the_workdir_reproduces_the_reported_numbers(reference_run):
  config, folder, _ = reference_run
  reported = workdir.read_metrics(str(folder))["splits"]
  again = evaluate.evaluate_checkpoint(config, str(folder), progress=False)
  assert again == reported


def test_the_val_protocol_logs_one_evaluation_per_epoch_of_the_selection_split(
    train_data_root, tmp_path):
  config = tiny_train_config(train_data_root, num_epochs=2)
  folder = tmp_path / "run"
  train.train_and_evaluate(config, str(folder), progress=False)
  n = steps_per_epoch(config)
  lines = workdir.read_evaluations(str(folder))
  assert [(line["step"], line["split"], line["protocol"]) for line in lines] == [
      (n, "val", "val"), (2 * n, "val", "val")]
  metrics = workdir.read_metrics(str(folder))
  best = max(lines, key=lambda line: (line["r1_sum_miou"], -line["step"]))
  assert metrics["step"] == best["step"] and metrics["protocol"] == "val"


# Trains reference_config into argv[2]; it kills itself (SIGKILL) right after the first write of
# evaluations.jsonl (an os.replace onto it) when argv[3] is "kill".
RUN = """
import os, signal, sys
root, folder, kill = sys.argv[1], sys.argv[2], sys.argv[3] == "kill"
_replace = os.replace
def replace(src, dst, *args, **kwargs):
  result = _replace(src, dst, *args, **kwargs)
  if kill and os.fspath(dst).endswith("evaluations.jsonl"):
    os.kill(os.getpid(), signal.SIGKILL)
  return result
os.replace = replace
from test_protocols import reference_config
from tea_jax import train
train.train_and_evaluate(reference_config(root), folder, progress=False)
"""


def test_a_kill_after_an_evaluation_is_written_leaves_no_duplicate_and_no_gap(
    reference_run, train_data_root, tmp_path, compilation_cache):
  _, straight, _ = reference_run
  env = dict(os.environ, PYTHONPATH=f"{REPO}:{REPO / 'tests'}",
             JAX_COMPILATION_CACHE_DIR=compilation_cache)
  folder = tmp_path / "run"
  run = lambda mode: subprocess.run(
      [sys.executable, "-c", RUN, str(train_data_root), str(folder), mode], cwd=REPO, env=env,
      capture_output=True, text=True, check=False, timeout=900)
  killed = run("kill")
  assert killed.returncode == -signal.SIGKILL, killed.stderr[-3000:]
  written = workdir.read_evaluations(str(folder))
  assert written and not (folder / "metrics.json").exists()  # the line is there, its checkpoint not
  finished = run("go on")
  assert finished.returncode == 0, finished.stderr[-3000:]
  assert workdir.read_evaluations(str(folder)) == workdir.read_evaluations(str(straight))
  assert workdir.read_metrics(str(folder)) == workdir.read_metrics(str(straight))


def test_every_annotated_pair_of_an_evaluation_split_is_counted(tmp_path):
  synthetic.generate(str(tmp_path), videos=24, seed=1, video_dim=32, word_dim=8)
  victim = (tmp_path / "charades_sta_test.txt").read_text().split()[0]
  lines = (tmp_path / "narratives.jsonl").read_text().splitlines()
  (tmp_path / "narratives.jsonl").write_text(
      "\n".join(line for line in lines if json.loads(line)["video_id"] != victim) + "\n")
  config = demo.get_config()  # TEA: it reads narratives
  config.unlock()
  config.data.root = str(tmp_path)
  config.model.update(video_dim=32, word_dim=8, narrative_dim=8)
  with pytest.raises(InputError, match=rf"^test: 1 without narratives \({victim}\) of its \d+ "
                                       rf"videos; their \d+ pairs would not be evaluated"):
    build_records(config, progress=False)
  annotated = sum(1 for line in open(tmp_path / "charades_sta_test.txt") if line.strip())
  config.data.missing = "zeros"
  meta = build_records(config, progress=False)
  assert meta["splits"]["test"]["pairs"] == annotated
  assert meta["narratives"]["zero_rows"] == {"test": [victim]}
  config.data.missing = "skip"
  meta = build_records(config, progress=False)
  victim_pairs = sum(1 for line in open(tmp_path / "charades_sta_test.txt")
                     if line.split()[:1] == [victim])
  assert meta["splits"]["test"]["pairs"] == annotated - victim_pairs
  assert victim in meta["missing_videos"]
  records = Records(records_dir(config.data), config.data)
  assert records.annotated_queries("test") == annotated
