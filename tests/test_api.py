"""tea_apps.api, the Predictor the predict command runs: the README's example on a demo layout
(synthetic demo_data and a TEA model at runs/demo/tea, trained one step), the command's answers
equal to the API's, the checkpoint restored once, moments against their curves, and bad input as
one line."""

import json
import os
import re
import runpy

import numpy as np
import pytest
from conftest import REPO

from configs import demo
from data_prep import synthetic
from data_prep.build_records import build_records
from data_prep.narratives import read_narratives
from tea_apps import predict
from tea_apps.api import Predictor
from tea_jax import checkpointing, train
from tea_jax.errors import InputError


@pytest.fixture(scope="module")
def demo_root(tmp_path_factory):
  """A folder laid out as after `make demo`: demo_data/ (the synthetic benchmark of the demo's
  size and seed) and runs/demo/tea (a small TEA model trained one step)."""
  root = tmp_path_factory.mktemp("api_demo")
  data = root / "demo_data"
  synthetic.generate(str(data), videos=260, seed=0)
  config = demo.get_config()
  config.unlock()
  config.data.root = str(data)
  config.model.update(hidden=16, num_heads=2)
  config.update(batch_size=8, eval_batch_size=8, num_epochs=1, max_steps=1, log_every_steps=1)
  config.data.eval_splits = ("test",)
  build_records(config, progress=False)
  train.train_and_evaluate(config, str(root / "runs" / "demo" / "tea"), progress=False)
  return root


def readme_example() -> str:
  """The first python block of the README's "Using the model from Python" section."""
  text = (REPO / "README.md").read_text()
  section = text[text.index("## Using the model from Python"):]
  return re.search(r"```python\n(.*?)```", section, re.S).group(1)


@pytest.fixture(scope="module")
def example(demo_root):
  """The README's example run in the demo folder: its variables."""
  path = demo_root / "readme_example.py"
  path.write_text(readme_example())
  cwd = os.getcwd()
  os.chdir(demo_root)
  try:
    return runpy.run_path(str(path))
  finally:
    os.chdir(cwd)


def test_the_readme_example_runs(example):
  moments = example["results"][0].moments
  assert len(moments) == 2 and moments[0].probability >= moments[1].probability
  result = example["result"]
  assert result.plan.mode == "windows" and result.plan.snippets == 288
  assert result.plan.window == 40 and result.plan.starts[-1] == 288 - 40
  assert len(result.start_prob) == len(result.highlight) == 288  # the whole video's curves
  assert 0 <= result.moments[0].start < result.moments[0].end <= 288.0


def test_moments_are_the_best_cells_of_their_curves(example):
  result = example["results"][0]
  start, end = np.asarray(result.start_prob, np.float64), np.asarray(result.end_prob, np.float64)
  cells = [(start[i] * end[j], i, j) for i in range(len(start)) for j in range(i, len(end))]
  best = sorted(cells, reverse=True)[:2]
  for moment, (p, i, j) in zip(result.moments, best):
    assert (moment.start_index, moment.end_index) == (i, j)
    assert moment.probability == pytest.approx(p, rel=1e-5)
    assert moment.start == pytest.approx(i * result.duration / len(start))
    assert moment.end == pytest.approx((j + 1) * result.duration / len(start))


def test_the_command_prints_the_apis_answers(demo_root, example, capsys):
  data = demo_root / "demo_data"
  argv = ["--workdir", str(demo_root / "runs/demo/tea"), "--features",
          str(data / "features" / "S0213.npy"), "--duration", "21", "--query",
          "person washes the book.", "--narratives", str(data / "narratives.jsonl"),
          "--word-vectors", str(data / "glove.txt"), "--top-k", "2"]
  assert predict.main(argv) == 0
  row = json.loads(capsys.readouterr().out)
  assert row["moments"] == [m.to_dict() for m in example["results"][0].moments]


def test_variables_are_restored_once(demo_root, monkeypatch):
  calls = []
  restore = checkpointing.restore_variables
  monkeypatch.setattr(checkpointing, "restore_variables",
                      lambda *args: calls.append(args) or restore(*args))
  data = demo_root / "demo_data"
  predictor = Predictor.from_workdir(str(demo_root / "runs/demo/tea"),
                                     word_vectors=str(data / "glove.txt"))
  assert not calls  # nothing restored before the first question
  narratives = read_narratives(str(data / "narratives.jsonl"))[0]
  for vid in ("S0160", "S0161", "S0213"):
    features = np.load(data / "features" / f"{vid}.npy")
    predictor.predict_features(features, float(len(features)), ["person holds the cup."],
                               narratives[vid], top_k=1)
  assert len(calls) == 1


def test_one_window_is_the_pooled_answer(demo_root):
  # A short video read as windows of its own length: one window, the same curves and best span
  # (the windowed path's softmax is numpy's float64 of the model's logits: equal to rounding).
  data = demo_root / "demo_data"
  features = np.load(data / "features" / "S0160.npy")
  items = read_narratives(str(data / "narratives.jsonl"))[0]["S0160"]
  answers = {}
  for mode in ("pool", "windows"):
    predictor = Predictor.from_workdir(str(demo_root / "runs/demo/tea"), long=mode,
                                       word_vectors=str(data / "glove.txt"), window=128)
    answers[mode], = predictor.predict_features(features, float(len(features)),
                                                ["person opens the door."], items, top_k=1)
  assert answers["windows"].plan.starts == (0,)
  np.testing.assert_allclose(answers["windows"].start_prob, answers["pool"].start_prob, rtol=1e-5)
  np.testing.assert_allclose(answers["windows"].end_prob, answers["pool"].end_prob, rtol=1e-5)
  windowed, pooled = answers["windows"].moments[0], answers["pool"].moments[0]
  assert (windowed.start_index, windowed.end_index) == (pooled.start_index, pooled.end_index)
  assert (windowed.start, windowed.end) == (pooled.start, pooled.end)
  assert windowed.probability == pytest.approx(pooled.probability, rel=1e-5)


def test_bad_input_is_one_line(demo_root, capsys):
  data = demo_root / "demo_data"
  workdir = str(demo_root / "runs/demo/tea")
  predictor = Predictor.from_workdir(workdir, word_vectors=str(data / "glove.txt"))
  features = np.load(data / "features" / "S0160.npy")
  items = read_narratives(str(data / "narratives.jsonl"))[0]["S0160"]
  query = ["person opens the door."]
  cases = [
      (dict(queries=[]), "no query given"),
      (dict(queries="person opens the door."), "queries must be a list of sentences"),
      (dict(queries=["  "]), "has no tokens"),
      (dict(queries=["zyx qwv"]), f"no word of the query 'zyx qwv' is in the vocabulary of "
                                  f"{workdir}"),
      (dict(top_k=0), "top_k must be a whole number >= 1, got 0"),
      (dict(top_k=1.5), "top_k must be a whole number >= 1, got 1.5"),
      (dict(features=features[:, :3]), "features have 3 channels; the model expects 256"),
      (dict(features=np.full_like(features, np.nan)), "features contain NaN or inf"),
      (dict(duration=0.0), "duration must be positive"),
      (dict(narratives=None), "reads narratives: pass narratives="),
      (dict(narratives=np.zeros((3, 50), np.float32)), "narrative rows have shape (3, 50)"),
  ]
  for change, message in cases:
    kwargs = dict(features=features, duration=30.0, queries=query, narratives=items, top_k=1)
    kwargs.update(change)
    with pytest.raises(InputError) as error:
      predictor.predict_features(**kwargs)
    assert message in str(error.value) and "\n" not in str(error.value), str(error.value)
  with pytest.raises(InputError, match="reads 256-d video features"):
    predictor.predict(str(data / "videos" / "S0160.mp4"), query)
  with pytest.raises(InputError, match="pass word_vectors="):
    Predictor.from_workdir(workdir).predict_features(features, 30.0, query, items)
  with pytest.raises(InputError, match="window must be 1..128"):
    Predictor.from_workdir(workdir, window=0)
  # The command: one line each, exit status 2.
  base = ["--workdir", workdir, "--features", str(data / "features" / "S0160.npy"),
          "--duration", "30", "--narratives", str(data / "narratives.jsonl"), "--word-vectors",
          str(data / "glove.txt")]
  for extra, message in [(["--query", "zyx qwv"], "no word of the query 'zyx qwv'"),
                         (["--query", "person", "--stride", "50", "--window", "40"],
                          "stride must be 1..window"),
                         (["--query", "person", "--nms-iou", "1"], "NMS IoU must be in [0, 1)")]:
    assert predict.main(base + extra) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1, err
