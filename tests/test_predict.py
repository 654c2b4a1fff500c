"""tea_apps.predict on raw files must give what evaluation on the built records gives."""

import json

import pytest

from configs import demo
from data_prep import synthetic
from data_prep.annotations import read_durations
from data_prep.build_records import build_records
from tea_apps import predict
from tea_jax import evaluate, train


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
  root = tmp_path_factory.mktemp("predict_data")
  synthetic.generate(str(root), videos=16, seed=2, video_dim=64, word_dim=24)
  config = demo.get_config()
  config.unlock()
  config.data.root = str(root)
  config.model.update(video_dim=64, word_dim=24, narrative_dim=24, hidden=16, num_heads=2,
                      merge="concat", paragraph_branch=True)  # TEA: narratives are read
  config.update(batch_size=8, eval_batch_size=8, num_epochs=1, max_steps=1, log_every_steps=1)
  config.data.eval_splits = ("test",)
  build_records(config, progress=False)
  workdir = root / "run"
  train.train_and_evaluate(config, str(workdir), progress=False)
  evaluate.evaluate_checkpoint(config, str(workdir), progress=False)
  return root, workdir


def test_predict_on_raw_files_matches_evaluation_on_records(trained, capsys):
  root, workdir = trained
  durations = read_durations(str(root / "charades.json"))
  predictions = [json.loads(line) for line in open(workdir / "predictions_test.jsonl")]
  for row in predictions[:4]:
    vid = row["video_id"]
    code = predict.main(["--workdir", str(workdir), "--features", str(root / "features"),
                         "--video-id", vid, "--duration", str(durations[vid]),
                         "--query", row["query"], "--narratives", str(root / "narratives.jsonl"),
                         "--word-vectors", str(root / "glove.txt"), "--top-k", "3"])
    assert code == 0
    out = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    best = out["moments"][0]
    assert best["start"] == pytest.approx(row["pred_start"], abs=1e-3)
    assert best["end"] == pytest.approx(row["pred_end"], abs=1e-3)
    assert best["probability"] == pytest.approx(row["score"], rel=1e-4)
    probs = [m["probability"] for m in out["moments"]]
    assert len(probs) == 3 and probs == sorted(probs, reverse=True)
    assert all(0 <= m["start"] < m["end"] <= durations[vid] + 1e-3 for m in out["moments"])


def test_predict_errors_are_clear(trained, capsys):
  root, workdir = trained
  base = ["--workdir", str(workdir), "--features", str(root / "features"), "--duration", "10"]
  vid = sorted(p.stem for p in (root / "features").glob("*.npy"))[0]
  assert predict.main(base + ["--video-id", vid, "--query", "a person"]) == 2
  assert "reads narratives" in capsys.readouterr().err
  text = ["--narratives", str(root / "narratives.jsonl"), "--word-vectors",
          str(root / "glove.txt")]
  assert predict.main(base + ["--video-id", "no_such_video", "--query", "x"] + text) == 2
  assert "no_such_video" in capsys.readouterr().err
  assert predict.main(base + ["--video-id", vid, "--query", "  "] + text) == 2
  assert "has no tokens" in capsys.readouterr().err
