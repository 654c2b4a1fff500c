"""Videos longer than the model's snippet budget (tea_apps/long_video.py): the plan, the windows,
the merge by NMS and the stitched curves by hand; the training snippet rate against the files the
records were built from; a long video made of the synthetic benchmark's held-out videos back to
back, answered by a tiny trained model, against each window answered on its own."""

import os
import statistics

import numpy as np
import pytest
from conftest import tiny_train_config

from data_prep.annotations import read_durations
from tea_apps import long_video
from tea_apps.api import Predictor
from tea_apps.long_video import LongVideo, Plan, TrainingSnippets
from tea_jax import metrics, train
from tea_jax.errors import InputError

TRAINING = TrainingSnippets(seconds=1.0, coarsest=1.2, longest=40, videos=100, source="test")


def test_window_starts_by_hand():
  assert long_video.window_starts(100, 40, 20) == (0, 20, 40, 60)
  assert long_video.window_starts(95, 40, 20) == (0, 20, 40, 55)  # the last moved back
  assert long_video.window_starts(30, 40, 20) == (0,)
  assert long_video.window_starts(40, 40, 20) == (0,)
  assert long_video.window_starts(41, 40, 40) == (0, 1)


def test_plan_by_hand():
  auto = LongVideo()
  # 300 rows of 1 s: pooling to 128 would make 2.34 s snippets, coarser than training's 1.2 s.
  assert long_video.plan(300, 300.0, 128, auto, TRAINING) == Plan(
      "windows", 300, 40, tuple(range(0, 261, 20)), 1.0)
  # Within the budget: pooled (the records' reduction, here none).
  assert long_video.plan(100, 100.0, 128, auto, TRAINING) == Plan("pool", 100, 100, (0,), 1.0)
  # 200 rows of 0.5 s: pooled to 128 they are 0.78 s, finer than training's coarsest: pooled.
  assert long_video.plan(200, 100.0, 128, auto, TRAINING) == Plan(
      "pool", 128, 128, (0,), 100.0 / 128)
  # Asked for windows: read at the training rate, 100 snippets of 1 s.
  windows = long_video.plan(200, 100.0, 128, LongVideo("windows"), TRAINING)
  assert windows == Plan("windows", 100, 40, (0, 20, 40, 60), 1.0)
  # Never more snippets than rows: 50 rows of 2 s stay 50 snippets.
  assert long_video.plan(50, 100.0, 128, LongVideo("windows"), TRAINING).snippets == 50
  assert long_video.plan(300, 300.0, 128, LongVideo("pool"), TRAINING).mode == "pool"
  given = LongVideo("windows", snippet_seconds=2.0, window=30, stride=10)
  assert long_video.plan(300, 300.0, 128, given, TRAINING) == Plan(
      "windows", 150, 30, tuple(range(0, 121, 10)), 2.0)
  # No training records: auto pools (and says why), windows need the rate.
  assert long_video.plan(300, 300.0, 128, auto, None).mode == "pool"
  with pytest.raises(InputError, match="--snippet-seconds"):
    long_video.plan(300, 300.0, 128, LongVideo("windows"), None)
  assert long_video.plan(300, 300.0, 128, LongVideo("windows", snippet_seconds=1.0), None) == \
      Plan("windows", 300, 128, (0, 64, 128, 172), 1.0)


@pytest.mark.parametrize("settings, message", [
    (LongVideo("fast"), "expected one of auto, windows, pool"),
    (LongVideo(window=0), "window must be 1..128"),
    (LongVideo(window=129), "window must be 1..128"),
    (LongVideo(window=20, stride=21), "stride must be 1..window"),
    (LongVideo(snippet_seconds=0.0), "snippet seconds must be positive"),
    (LongVideo(nms_iou=1.0), r"NMS IoU must be in \[0, 1\)"),
])
def test_bad_settings_are_one_line(settings, message):
  with pytest.raises(InputError, match=message):
    settings.check(128)


def test_merge_windows_by_hand():
  # Two windows of 3 snippets over 5 snippets of 2 s: window 0 covers snippets 0-2, window 1 2-4.
  plan = Plan("windows", 5, 3, (0, 2), 2.0)
  start = np.array([[0.7, 0.2, 0.1], [0.1, 0.1, 0.8]], np.float32)
  end = np.array([[0.1, 0.6, 0.3], [0.05, 0.05, 0.9]], np.float32)
  spans = long_video.merge_windows(start, end, plan, 10.0, top_k=3, nms_iou=0.5)
  # Best: (4, 4) 0.72 = [8, 10] s; (0, 1) 0.42 = [0, 4]; (0, 2) 0.21 = [0, 6] overlaps [0, 4] by
  # 4/6 and goes; (1, 1) 0.12 = [2, 4] overlaps [0, 4] by exactly 0.5 and stays.
  assert [(i, j) for i, j, _ in spans] == [(4, 4), (0, 1), (1, 1)]
  assert [p for _, _, p in spans] == pytest.approx([0.72, 0.42, 0.12], rel=1e-6)
  spans = long_video.merge_windows(start, end, plan, 10.0, top_k=3, nms_iou=0.3)
  # At 0.3, (1, 1), (2, 4), (3, 4), (0, 0) and (1, 2) go; (2, 2) of window 0 (0.03, not window 1's
  # 0.005 for the same snippet) overlaps nothing kept.
  assert [(i, j) for i, j, _ in spans] == [(4, 4), (0, 1), (2, 2)]
  assert spans[2][2] == pytest.approx(0.03, rel=1e-6)


def test_stitch_takes_the_largest_value_of_the_covering_windows():
  plan = Plan("windows", 5, 3, (0, 2), 2.0)
  curves = np.array([[0.1, 0.5, 0.2], [0.4, 0.3, 0.9]], np.float32)
  np.testing.assert_allclose(long_video.stitch(curves, plan), [0.1, 0.5, 0.4, 0.3, 0.9])


def test_training_snippets_of_the_records(train_data_root):
  config = tiny_train_config(train_data_root)
  config.unlock()
  training = long_video.training_snippets(config, "workdir")
  # By hand from the files the records were built from: each train video's duration over its
  # feature rows (synthetic videos are shorter than 128 rows: not reduced).
  durations = read_durations(str(train_data_root / "charades.json"))
  lines = (train_data_root / "charades_sta_train.txt").read_text().split("\n")
  videos = sorted({line.split(" ")[0] for line in lines if line.strip()})
  rows = {v: len(np.load(train_data_root / "features" / f"{v}.npy")) for v in videos}
  seconds = [durations[v] / rows[v] for v in videos]
  assert training.videos == len(videos)
  assert training.seconds == pytest.approx(statistics.median(seconds))
  assert training.coarsest == pytest.approx(float(np.percentile(seconds, 95)))
  assert training.longest == max(rows.values())
  # A config whose records are not at hand: unknown.
  config.data.root = os.path.join(str(train_data_root), "moved")
  assert long_video.training_snippets(config, "workdir") is None


# ---------------------------------------------------------------------------------------------
# A long video made of the held-out videos of the synthetic benchmark, back to back, and a tiny
# EMB model trained on its train split.

HELD_OUT = ("val", "test", "test_ood", "novel_word", "novel_composition")


@pytest.fixture(scope="module")
def long_world(train_data_root, tmp_path_factory):
  """The trained tiny model and a long video: every held-out video back to back, with each
  annotated query whose sentence no other of them has and its moment in the long video."""
  workdir = tmp_path_factory.mktemp("long_video") / "emb"
  train.train_and_evaluate(tiny_train_config(train_data_root), str(workdir), progress=False)
  durations = read_durations(str(train_data_root / "charades.json"))
  pairs = {}
  for split in HELD_OUT:
    for line in (train_data_root / f"charades_sta_{split}.txt").read_text().splitlines():
      if line.strip():
        head, sentence = line.split("##")
        vid, start, end = head.split()
        pairs.setdefault(vid, []).append((sentence, float(start), float(end)))
  videos = sorted(v for v, d in durations.items() if v in pairs)
  features, queries, offset = [], [], 0.0
  for vid in videos:
    features.append(np.load(train_data_root / "features" / f"{vid}.npy"))
    others = {s for v in videos if v != vid for s, _, _ in pairs[v]}
    queries += [(s, (offset, offset + durations[vid]), (offset + a, offset + b))
                for s, a, b in pairs[vid] if s not in others]
    offset += durations[vid]
  return {"workdir": str(workdir), "features": np.concatenate(features), "duration": offset,
          "queries": queries}


def test_the_long_video_is_answered_from_its_windows(long_world):
  features, duration = long_world["features"], long_world["duration"]
  assert len(features) > 128  # more than the model's budget
  query = long_world["queries"][0][0]
  windowed = Predictor.from_workdir(long_world["workdir"])  # auto
  result, = windowed.predict_features(features, duration, [query], top_k=3)
  plan = result.plan
  # Synthetic features are one row per second, as training's: the video keeps its rows.
  assert plan.mode == "windows" and plan.snippets == len(features)
  assert plan.snippet_seconds == pytest.approx(1.0)
  # Each window answered on its own (its rows as a short video) by the pooled path.
  alone = Predictor.from_workdir(long_world["workdir"], long="pool")
  answers = [alone.predict_features(features[s:s + plan.window], float(plan.window), [query],
                                    top_k=1)[0] for s in plan.starts]
  stitched = np.max([np.pad(a.start_prob, (s, plan.snippets - s - plan.window),
                            constant_values=-1.0) for s, a in zip(plan.starts, answers)], axis=0)
  np.testing.assert_allclose(result.start_prob, stitched, rtol=1e-5, atol=1e-7)
  best = max(range(len(answers)), key=lambda w: answers[w].moments[0].probability)
  top, start = answers[best].moments[0], plan.starts[best]
  assert (result.moments[0].start_index, result.moments[0].end_index) == (
      start + top.start_index, start + top.end_index)
  assert result.moments[0].probability == pytest.approx(top.probability, rel=1e-5)
  assert result.moments[0].start == pytest.approx(start + top.start_index)  # 1 s snippets
  # The other moments overlap the better ones by at most the NMS IoU.
  moments = result.moments
  assert [m.probability for m in moments] == sorted((m.probability for m in moments),
                                                    reverse=True)
  for k, m in enumerate(moments):
    for better in moments[:k]:
      assert metrics.iou(m.start, m.end, better.start, better.end) <= 0.5
  # Pooled instead: 128 snippets over the whole video.
  pooled, = alone.predict_features(features, duration, [query], top_k=1)
  assert pooled.plan.mode == "pool" and len(pooled.start_prob) == 128


@pytest.mark.xfail(strict=True, reason=(
    "the demo's trained models answer every query of a video alike (predictions_<split>.jsonl: "
    "85-90% of videos with several queries get one moment for all of them), so nothing tells "
    "the query's video from the others; remove this mark once training grounds the query"))
def test_the_top_moment_lies_in_the_querys_video(long_world):
  predictor = Predictor.from_workdir(long_world["workdir"])
  queries = long_world["queries"]
  results = predictor.predict_features(long_world["features"], long_world["duration"],
                                        [q for q, _, _ in queries], top_k=1)
  inside = [video[0] <= r.moments[0].start and r.moments[0].end <= video[1]
            for r, (_, video, _) in zip(results, queries)]
  # Chance is about one in ten videos; a model that finds the query's video gets most of them.
  assert sum(inside) >= 0.75 * len(inside), inside
