"""The train-free retriever (tea_jax/trainfree.py, docs/design.md section 21): a segment search
worked by hand, and the retriever evaluated through the commands trained models go through (`tea-jax
--mode eval`, training mode, the Predictor, `tea-jax-predict`), its numbers recomputed here with
plain Python loops from the records."""

import json
import math
import subprocess
import sys

import numpy as np
import pytest
from conftest import REPO

from tea_jax import trainfree
from tea_jax.errors import ConfigError, InputError

# The hand-worked curve: 10 snippets, a bump over snippets 3-6 and a faint 0.1 at snippet 2.
CURVE = np.array([0.0, 0.0, 0.1, 0.5, 1.0, 1.0, 0.5, 0.0, 0.0, 0.0])


def test_hand_worked_curve_gives_its_best_segment():
  """Worked by hand with the default settings (threshold 0.2, window_fraction 0.2, max_fraction
  0.5, nms_iou 0.3). The curve already spans [0, 1], so normalising leaves it as it is.

  Relevant snippets (> 0.2): 3, 4, 5, 6 with values 0.5, 1, 1, 0.5 (sum 3, count 4); snippet 2
  (0.1) counts 0. Step = round(0.2 * 10) = 2, longest = 0.5 * 10 = 5: lengths 2 and 4.
    [3..6] (length 4): inside 3 / 4 = 0.75, nothing relevant outside (0): 0.75   <- best
    [4..5] (length 2): inside 2 / 2 = 1, outside (0.5 + 0.5) / 2 = 0.5:  0.5
    [2..5], [4..7] (length 4): inside 2.5 / 4 = 0.625, outside 0.5 / 1:  0.125
  The dynamic start: steps under 3 do not smooth, so the rise at i is c[i + 1] - c[i] on relevant
  snippets: 0 at 0-2 (snippet 2 is irrelevant), 0.5 at 3, 0 at 4, -0.5 at 5 and 6. Snippet 3
  rises (3 * 0.5 > 5e-4), snippet 4 too (2 * 0 + 0.5), snippet 5 not (-1.5, -1, 0): the rising
  edge through the window's first snippet 3 began after snippet 2, so the moment starts at 2.
  Second best after NMS at 0.3: [4..5] overlaps [3..6] by 2 / 4, [2..5] and [4..7] by 3 / 5,
  [1..4] and [5..8] by 2 / 6 = 0.33 (all dropped); [2..3] and [6..7] overlap by 1 / 5 and score
  0.5 / 2 - 2.5 / 3 = -0.5833; equal scores keep the search's order (lengths, then starts), so
  [2..3] comes first; its start 2 does not rise, so it stays.
  """
  settings = trainfree.SearchSettings()
  best, second = trainfree.search(CURVE, settings, top_k=2)
  assert (best.start, best.end, best.window_start) == (2, 6, 3)
  assert best.score == pytest.approx(0.75)
  assert (second.start, second.end, second.window_start) == (2, 3, 2)
  assert second.score == pytest.approx(0.5 / 2 - 2.5 / 3)
  # Any scale and offset of the same curve is the same curve once normalised.
  assert trainfree.search(3.0 * CURVE - 7.0, settings, top_k=2) == [best, second]


def test_a_flat_or_irrelevant_curve_gives_the_whole_video():
  settings = trainfree.SearchSettings()
  assert trainfree.search(np.full(7, 0.4), settings) == [trainfree.Segment(0, 6, 0.0, 0)]


def test_query_vector_and_cosine():
  table = np.array([[1.0, 0.0], [0.0, 2.0], [3.0, 3.0]], np.float32)  # rows of ids 2, 3, 4
  # PAD (0) and UNK (1) carry no vector: the mean is over ids 2 and 3 only.
  np.testing.assert_allclose(trainfree.mean_word_vector(np.array([2, 1, 3, 0]), table),
                             [0.5, 1.0])
  assert not trainfree.mean_word_vector(np.array([1, 0]), table).any()
  rows = np.array([[1.0, 0.0], [0.0, 0.0], [1.0, 1.0]])
  np.testing.assert_allclose(trainfree.cosine_relevance(np.array([2.0, 0.0]), rows),
                             [1.0, 0.0, 1 / math.sqrt(2)])


def test_bad_settings_are_one_line_config_errors():
  with pytest.raises(ConfigError, match=r"config.trainfree.threshold=1.5"):
    trainfree.SearchSettings(threshold=1.5)
  with pytest.raises(ConfigError, match=r"config.trainfree.window_fraction=0"):
    trainfree.SearchSettings(window_fraction=0)
  with pytest.raises(ConfigError, match=r"need trainfree.scores"):
    trainfree.SearchSettings(text_weight=1.0)
  with pytest.raises(ConfigError, match=r"all 0"):
    trainfree.SearchSettings(glove_weight=0.0)


def test_curves_combine_as_weighted_means_of_normalised_curves():
  # normalise([1, 3, 2]) = [0, 1, 0.5]; normalise([5, 5, 7]) = [0, 0, 1]; weights 1 and 3.
  combined = trainfree.combine([np.array([1.0, 3.0, 2.0]), np.array([5.0, 5.0, 7.0])], [1.0, 3.0])
  np.testing.assert_allclose(combined, [0.0, 0.25, (0.5 + 3.0) / 4])


# ---------------------------------------------------------------------------------------------
# Through the commands of trained models, on a small synthetic benchmark


def demo_config(root):
  from configs import demo  # pylint: disable=import-outside-toplevel
  config = demo.get_config("trainfree")
  config.unlock()
  config.data.root = str(root)
  config.eval_batch_size = 8
  config.data.eval_splits = ("test", "test_ood")
  return config


@pytest.fixture(scope="module")
def evaluated(tmp_path_factory):
  """The synthetic benchmark (24 videos), its records, and `tea-jax --mode eval` of the train-free
  variant on them, as a user types it."""
  from data_prep import synthetic
  from data_prep.build_records import build_records
  root = tmp_path_factory.mktemp("trainfree_data")
  synthetic.generate(str(root), videos=24, seed=1, video_dim=256, word_dim=50, write_videos=True)
  build_records(demo_config(root), progress=False)
  workdir = root / "runs" / "trainfree"
  subprocess.run([sys.executable, "-m", "tea_jax.main", "--config=configs/demo.py:trainfree",
                  f"--config.data.root={root}", "--config.eval_batch_size=8",
                  "--config.data.eval_splits=('test','test_ood')", f"--workdir={workdir}",
                  "--mode=eval"], cwd=REPO, check=True, capture_output=True, text=True)
  return root, workdir


def by_hand(curve, threshold=0.2, window_fraction=0.2, max_fraction=0.5, rise_threshold=5e-4,
            sigma=1.0):
  """The best (start, end) of a curve, by loops over every window (the rule of the docstring of
  tea_jax/trainfree.py, written out without arrays)."""
  low, high = min(curve), max(curve)
  curve = [(c - low) / (high - low) if high - low > 1e-12 else 0.0 for c in curve]
  n = len(curve)
  kept = [c if c > threshold else 0.0 for c in curve]
  if not any(kept):
    return 0, n - 1
  step = min(max(1, round(window_fraction * n)), max(1, n // 2))
  best = None
  for length in range(step, max(step, min(n, int(max_fraction * n))) + 1, step):
    for first in range(n - length + 1):
      inside = sum(kept[first:first + length]) / length
      outside = [kept[k] for k in range(n) if not first <= k < first + length and kept[k] > 0]
      score = inside - (sum(outside) / len(outside) if outside else 0.0)
      if best is None or score > best[0]:
        best = (score, first, length)
  _, first, length = best
  # The rising edge: smoothed rises (TFVTG's taps), then walk back from the window's start.
  half = 0 if step < 3 else min(step - 2, 3) // 2
  taps = [math.exp(-x * x / (2 * sigma * sigma)) / (math.sqrt(2 * math.pi) * sigma)
          for x in range(-half, half + 1)] if step >= 3 else [1.0]
  smooth = {i: sum(t * kept[i + x - half] for x, t in enumerate(taps))
            for i in range(half, n - half)}
  rise = [smooth[i + 1] - smooth[i] if i in smooth and i + 1 in smooth and kept[i] > 0 else 0.0
          for i in range(n)]
  start = 0
  for i in range(first + 1):
    r = [rise[i - k] if i - k >= 0 else 0.0 for k in range(3)]
    if not max(3 * r[0], 2 * r[0] + r[1], r[0] + r[1] + r[2]) > rise_threshold:
      start = i
  return start, first + length - 1


def test_eval_command_writes_what_trained_models_write(evaluated):
  """metrics.json and predictions_<split>.jsonl as a trained model's evaluation writes them, every
  span recomputed from the records by loops, every IoU and metric from the predicted seconds."""
  from tea_jax.data.input_pipeline import Records  # pylint: disable=import-outside-toplevel
  from tea_jax.data.schema import records_dir  # pylint: disable=import-outside-toplevel
  root, workdir = evaluated
  config = demo_config(root)
  records = Records(records_dir(config.data), config.data)
  table = records.word_vectors()
  metrics = json.loads((workdir / "metrics.json").read_text())
  assert set(metrics["splits"]) == {"test", "test_ood"} and metrics["step"] == 0
  assert json.loads((workdir / "config.json").read_text())["variant"] == "trainfree"
  for split in ("test", "test_ood"):
    rows = [json.loads(line) for line in open(workdir / f"predictions_{split}.jsonl")]
    assert len(rows) == records.queries(split)
    spans = {}
    for batch in records.eval_batches(split, 8):
      for i in np.nonzero(batch["valid"])[0]:
        v_len = int(batch["video_mask"][i].sum())
        ids = [int(t) for t in batch["word_ids"][i] if t >= 2]
        query = [sum(float(table[t - 2][d]) for t in ids) / len(ids)
                 for d in range(table.shape[1])]
        curve = []
        for row in batch["narrative"][i, :v_len]:
          dot = sum(float(a) * b for a, b in zip(row, query))
          norm = math.sqrt(sum(float(a) ** 2 for a in row)) * math.sqrt(sum(b * b for b in query))
          curve.append(dot / norm if norm > 0 else 0.0)
        start, end = by_hand(curve)
        d = float(batch["duration"][i])
        spans[int(batch["pair_index"][i])] = (start * d / v_len, (end + 1) * d / v_len)
    ious = []
    for row in rows:
      assert (row["pred_start"], row["pred_end"]) == pytest.approx(spans[row["pair_index"]])
      inter = min(row["pred_end"], row["true_end"]) - max(row["pred_start"], row["true_start"])
      union = max(row["pred_end"], row["true_end"]) - min(row["pred_start"], row["true_start"])
      assert row["iou"] == pytest.approx(max(inter, 0.0) / union)
      assert row["step"] == 0
      ious.append(row["iou"])
    reported = metrics["splits"][split]
    for m in (0.3, 0.5, 0.7):
      assert reported[f"r1@{m}"] == pytest.approx(100 * sum(x >= m for x in ious) / len(ious))
    assert reported["miou"] == pytest.approx(100 * sum(ious) / len(ious))
    assert reported["count"] == len(ious)


def test_train_mode_and_eval_mode_agree(evaluated, tmp_path):
  """`tea-jax` without --mode has nothing to train: it evaluates, with the same numbers."""
  from tea_jax import evaluate, train  # pylint: disable=import-outside-toplevel
  root, workdir = evaluated
  config = demo_config(root)
  out = train.train_and_evaluate(config, str(tmp_path / "run"), progress=False)
  expected = json.loads((workdir / "metrics.json").read_text())["splits"]
  assert out["step"] == 0 and out["metrics"] == expected
  # --mode eval on the finished workdir, named by its config.json, again gives them.
  assert evaluate.evaluate_checkpoint(config, str(tmp_path / "run"), progress=False) == expected


def test_predictor_and_predict_command_match_the_evaluation(evaluated, capsys):
  """Predictor.from_workdir on the train-free workdir: a records pair and the raw files (features,
  narration, GloVe) give the evaluation's moment."""
  from data_prep.annotations import read_durations  # pylint: disable=import-outside-toplevel
  from tea_apps import predict, records_pair  # pylint: disable=import-outside-toplevel
  from tea_apps.api import Predictor, TrainFreePredictor  # pylint: disable=import-outside-toplevel
  root, workdir = evaluated
  predictor = Predictor.from_workdir(str(workdir))
  assert isinstance(predictor, TrainFreePredictor)
  rows = [json.loads(line) for line in open(workdir / "predictions_test.jsonl")][:3]
  durations = read_durations(str(root / "charades.json"))
  for row in rows:
    pair = records_pair.read_pair(predictor.config, str(workdir), "test", row["pair_index"])
    result = predictor.predict_features(pair.video, pair.duration, [pair.query], pair.narrative,
                                        top_k=3)[0]
    assert (result.moments[0].start, result.moments[0].end) == pytest.approx(
        (row["pred_start"], row["pred_end"]))
    assert result.moments[0].probability == pytest.approx(row["score"])
    vid = row["video_id"]
    code = predict.main(["--workdir", str(workdir), "--features", str(root / "features"),
                         "--video-id", vid, "--duration", str(durations[vid]),
                         "--query", row["query"], "--narratives", str(root / "narratives.jsonl"),
                         "--word-vectors", str(root / "glove.txt"), "--top-k", "2"])
    assert code == 0
    out = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert (out["moments"][0]["start"], out["moments"][0]["end"]) == pytest.approx(
        (row["pred_start"], row["pred_end"]), abs=1e-3)
    # A video file: no I3D (the retriever reads no video features), one snippet per second of
    # narration; the synthetic videos last a whole number of seconds, one feature row each, so
    # the grid is the records' and the moment the evaluation's.
    code = predict.main(["--workdir", str(workdir), "--video", str(root / "videos" / f"{vid}.mp4"),
                         "--query", row["query"], "--narratives", str(root / "narratives.jsonl"),
                         "--word-vectors", str(root / "glove.txt")])
    assert code == 0
    out = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert (out["moments"][0]["start"], out["moments"][0]["end"]) == pytest.approx(
        (row["pred_start"], row["pred_end"]), abs=1e-3)



def test_text_encoder_and_blip2_curves_feed_the_evaluation(evaluated, tmp_path):
  """tea_apps.trainfree_scores with a tiny random BERT and a tiny random BLIP-2 (built from
  configs, nothing downloaded) writes one line per pair; `--mode eval` with their weights searches
  the weighted mean of the three normalised curves."""
  from tea_apps import trainfree_scores  # pylint: disable=import-outside-toplevel
  from data_prep.frames import sample_frames  # pylint: disable=import-outside-toplevel
  from data_prep.narratives import read_narratives  # pylint: disable=import-outside-toplevel
  from data_prep.testing import random_mllm  # pylint: disable=import-outside-toplevel
  from tea_jax import evaluate  # pylint: disable=import-outside-toplevel
  root, _ = evaluated
  text_dir = random_mllm.save(*random_mllm.build_text_encoder(), str(tmp_path / "text"))
  blip2_dir = random_mllm.save(*random_mllm.build_blip2_retrieval(), str(tmp_path / "blip2"))
  config = demo_config(root)
  config.data.eval_splits = ("test",)
  out = tmp_path / "curves.jsonl"
  count = trainfree_scores.write_scores(config, str(out), text_encoder=text_dir, blip2=blip2_dir,
                                        videos=str(root / "videos"))
  lines = [json.loads(line) for line in open(out)]
  assert count == len(lines) > 0
  # The synthetic videos have one feature row per second, so snippet k holds the frame of second
  # k alone: the frame curve is the frame's own score.
  first = lines[0]
  scorer = trainfree_scores.Blip2FrameScorer(blip2_dir)
  frames = list(sample_frames(str(root / "videos" / f"{first['video_id']}.mp4"), 1.0))
  assert len(first["curves"]["frames"]) == len(first["curves"]["text"]) == len(frames)
  np.testing.assert_allclose(first["curves"]["frames"],
                             scorer.scores([image for _, image in frames], first["query"]),
                             rtol=1e-5, atol=1e-6)
  # Likewise snippet k holds the caption of second k: the text curve is the cosine of the query's
  # and that caption's embeddings, for every pair (a video's later queries reuse its captions).
  encoder = trainfree_scores.TransformerTextEncoder(text_dir)
  captions = read_narratives(str(root / "narratives.jsonl"))[0]
  for line in lines:
    rows = encoder.encode([text for _, text in captions[line["video_id"]]])
    query = encoder.encode([line["query"]])[0]
    cosine = rows @ query / (np.linalg.norm(rows, axis=1) * np.linalg.norm(query))
    np.testing.assert_allclose(line["curves"]["text"], cosine, rtol=1e-4, atol=1e-5)
  config.trainfree.update(glove_weight=0.5, text_weight=1.0, frames_weight=2.0, scores=str(out))
  workdir = tmp_path / "combined"
  evaluate.evaluate_trainfree(config, str(workdir), progress=False)
  rows = {r["pair_index"]: r for r in map(json.loads, open(workdir / "predictions_test.jsonl"))}
  glove_rows = {r["pair_index"]: r for r in map(json.loads, open(
      evaluated[1] / "predictions_test.jsonl"))}
  assert rows.keys() == glove_rows.keys() == {line["pair_index"] for line in lines}
  assert any((rows[k]["pred_start"], rows[k]["pred_end"]) != (
      glove_rows[k]["pred_start"], glove_rows[k]["pred_end"]) for k in rows)
  # A curve missing from the file is one line naming the pair.
  out.write_text("".join(json.dumps({**line, "curves": {"text": line["curves"]["text"]}}) + "\n"
                         for line in lines))
  with pytest.raises(InputError, match=r"no 'frames' curve for test pair"):
    evaluate.evaluate_trainfree(config, str(tmp_path / "broken"), progress=False)
