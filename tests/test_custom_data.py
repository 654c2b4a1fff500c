"""Your own dataset in the JSON-lines format of Moment-DETR / QVHighlights / Lighthouse: the reader,
its bad lines, and the README's commands end to end (every window trains, each query is evaluated
once against the window its prediction matches best)."""

import json
import os
import subprocess
import sys

import pytest
from conftest import REPO

from data_prep import synthetic
from data_prep.annotations import read_annotations
from tea_jax import workdir
from tea_jax.errors import InputError
from tea_jax.evaluate import by_query

LINES = [
    {"qid": 7, "query": "a person opens the door", "vid": "v1", "duration": 30.0,
     "relevant_windows": [[2.0, 6.0], [20.0, 24.0]], "saliency_scores": [[4, 4]]},
    {"qid": "q8", "query": "a person sits down", "vid": "v2", "duration": 10.0,
     "relevant_windows": [[8.0, 12.0]]},
]


def write_lines(path, lines):
  path.write_text("".join(line if isinstance(line, str) else json.dumps(line) + "\n"
                          for line in lines))
  return str(path)


def test_every_window_is_a_pair_and_a_query_keeps_its_windows_together(tmp_path):
  annotations = read_annotations(write_lines(tmp_path / "train.jsonl", LINES))
  assert annotations.family == "moment_jsonl" and annotations.queries == 2
  assert [(p.video_id, p.start, p.end, p.query_index, p.qid) for p in annotations.pairs] == [
      ("v1", 2.0, 6.0, 0, "7"), ("v1", 20.0, 24.0, 0, "7"), ("v2", 8.0, 10.0, 1, "q8")]
  # The window that ends after its video is clipped and counted, as in every family.
  assert annotations.bad == [] and annotations.summary()["clipped_moments"] == 1


@pytest.mark.parametrize("line,reason", [
    ("{not json\n", "train.jsonl:2: not a JSON object"),
    ({"qid": 1, "query": "x", "vid": "v", "relevant_windows": [[0, 1]]},
     "train.jsonl:2: missing key(s) duration"),
    ({"qid": 1, "query": "x", "vid": "v", "duration": 9, "relevant_windows": [[5, 5]]},
     "train.jsonl:2[0]: window [5.0, 5.0]: start >= end"),
    ({"qid": 1, "query": "x", "vid": "v", "duration": 9, "relevant_windows": [[12, 14]]},
     "train.jsonl:2[0]: moment [12.0, 14.0] lies outside the video [0, 9.0]"),
    ({"qid": 1, "query": "x", "vid": "v", "duration": 9, "relevant_windows": []},
     "train.jsonl:2: relevant_windows is not a non-empty list"),
])
def test_a_bad_line_is_one_line_naming_file_and_line(tmp_path, line, reason):
  path = write_lines(tmp_path / "train.jsonl", [LINES[0], line])
  with pytest.raises(InputError) as error:
    read_annotations(path, bad_records="fail")
  assert reason in str(error.value) and "\n" not in str(error.value)
  kept = read_annotations(path, bad_records="skip")  # reported, the good line still read
  assert [p.qid for p in kept.pairs] == ["7", "7"]


def test_inspect_reports_a_jsonl_file(tmp_path):
  path = write_lines(tmp_path / "val.jsonl", LINES)
  proc = subprocess.run([sys.executable, "-m", "data_prep.inspect", path], cwd=REPO,
                        capture_output=True, text=True, check=False, timeout=300)
  assert proc.returncode == 0, proc.stderr[-2000:]
  summary = json.loads(proc.stdout)
  assert (summary["family"], summary["pairs"], summary["queries"]) == ("moment_jsonl", 3, 2)


def test_a_query_is_scored_against_the_window_it_matches_best():
  base = {"video_id": "v1", "query": "q", "qid": "7", "query_index": 0, "pred_start": 19.0,
          "pred_end": 23.0, "score": 0.5}
  pairs = [dict(base, pair_index=0, true_start=2.0, true_end=6.0, iou=0.0),
           dict(base, pair_index=1, true_start=20.0, true_end=24.0, iou=0.6),
           dict(base, query_index=1, qid="8", pair_index=2, true_start=1.0, true_end=2.0,
                iou=0.1)]
  first, second = by_query(pairs)
  assert (first["iou"], first["pair_index"], first["true_start"]) == (0.6, 1, 20.0)
  assert first["windows"] == [[2.0, 6.0], [20.0, 24.0]]
  assert second["iou"] == 0.1 and "windows" not in second


# The README's "Train on your own data" commands, on a smaller dataset and model.
DIMS = ["--config.data.word_vectors=glove.txt", "--config.model.video_dim=256",
        "--config.model.word_dim=50", "--config.model.narrative_dim=50"]
SMALL = ["--config.model.hidden=16", "--config.model.num_heads=2", "--config.num_epochs=1",
         "--config.batch_size=8", "--config.eval_batch_size=8"]


def test_a_generated_custom_dataset_trains_and_evaluates_through_the_commands(tmp_path):
  data = tmp_path / "my_data"
  synthetic.generate(str(data), videos=30, seed=5, annotation_format="jsonl")
  # One test query with a second window (elsewhere in its video): it is one query of two pairs.
  lines = [json.loads(x) for x in (data / "test.jsonl").read_text().splitlines()]
  start, end = lines[0]["relevant_windows"][0]
  lines[0]["relevant_windows"].append([end + 1.0, end + 3.0])
  write_lines(data / "test.jsonl", lines)
  env = dict(os.environ, PYTHONPATH=str(REPO))
  root = [f"--config.data.root={data}"]
  build = subprocess.run([sys.executable, "-m", "data_prep.build_records", "--config",
                          "configs/custom.py", *root, *DIMS], cwd=REPO, env=env,
                         capture_output=True, text=True, check=False, timeout=900)
  assert build.returncode == 0, build.stderr[-3000:]
  meta = json.loads((data / "records_max" / "meta.json").read_text())
  for split in ("train", "val", "test"):
    file_lines = [json.loads(x) for x in (data / f"{split}.jsonl").read_text().splitlines()]
    assert meta["splits"][split]["queries"] == len(file_lines)
    assert meta["splits"][split]["pairs"] == sum(len(x["relevant_windows"]) for x in file_lines)
  run = tmp_path / "run"
  train = subprocess.run([sys.executable, "-m", "tea_jax.main", "--config", "configs/custom.py",
                          *root, *DIMS, *SMALL, "--workdir", str(run)], cwd=REPO, env=env,
                         capture_output=True, text=True, check=False, timeout=1500)
  assert train.returncode == 0, train.stderr[-3000:]
  metrics = workdir.read_metrics(str(run))
  assert metrics["splits"]["test"]["count"] == len(lines)
  predictions = workdir.read_predictions(str(run), "test")
  assert [p["qid"] for p in predictions] == [x["qid"] for x in lines]
  two = predictions[0]
  assert two["windows"] == lines[0]["relevant_windows"]
  ious = []
  for s, e in two["windows"]:
    inter = max(min(e, two["pred_end"]) - max(s, two["pred_start"]), 0.0)
    ious.append(inter / (max(e, two["pred_end"]) - min(s, two["pred_start"])))
  assert two["iou"] == pytest.approx(max(ious), abs=1e-12)
