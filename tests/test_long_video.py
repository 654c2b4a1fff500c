"""Videos longer than the model's snippet budget (tea_apps/long_video.py): the plan, the windows,
the whole video's probabilities, the merge by NMS and the stitched curves by hand; the training
snippet rate against the files the records were built from; a long video made of the demo
benchmark's test_ood videos back to back, answered by a small model trained on videos of many
actions: against the windows' logits computed one window at a time, and whether the top moment
lies in the query's own video."""

import os
import statistics

import numpy as np
import pytest
from conftest import tiny_train_config

from data_prep import synthetic
from data_prep.annotations import read_durations
from data_prep.build_records import build_records
from tea_apps import long_video
from tea_apps.api import Predictor, query_ids
from tea_apps.long_video import LongVideo, Plan, TrainingSnippets
from tea_jax import inference, metrics, train
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
  # 5 snippets of 2 s (10 s), spans up to 3 snippets long (a window's width).
  plan = Plan("windows", 5, 3, (0, 2), 2.0)
  start = np.array([0.5, 0.1, 0.1, 0.2, 0.1])
  end = np.array([0.1, 0.4, 0.1, 0.1, 0.3])
  spans = long_video.merge_windows(start, end, plan, 3, 10.0, top_k=3, nms_iou=0.5)
  # Best: (0, 1) 0.20 = [0, 4] s ((0, 4) would be 0.15 but is 5 snippets long, more than a
  # window); (3, 4) 0.06 = [6, 10]; (0, 0) 0.05 = [0, 2] overlaps [0, 4] by exactly 0.5 and stays
  # ((0, 2) 0.05 = [0, 6] overlaps it by 4/6 and went with it).
  assert [(i, j) for i, j, _ in spans] == [(0, 1), (3, 4), (0, 0)]
  assert [p for _, _, p in spans] == pytest.approx([0.20, 0.06, 0.05])
  spans = long_video.merge_windows(start, end, plan, 3, 10.0, top_k=3, nms_iou=0.3)
  # At 0.3, [0, 4] takes (0, 0), (1, 1) and (1, 2) ([2, 6]: 1/3) with it, and [6, 10] takes
  # (4, 4), (3, 3), (2, 4) and (2, 3) ([4, 8]: 1/3); of the 0.01 spans left, (2, 2) = [4, 6] comes
  # before (1, 3) = [2, 8] (equal scores keep the order of span lengths, then starts).
  assert [(i, j) for i, j, _ in spans] == [(0, 1), (3, 4), (2, 2)]


def test_whole_video_probabilities_by_hand():
  # Two windows of 3 over 5 snippets: snippet 2 is in both and keeps the larger logit.
  plan = Plan("windows", 5, 3, (0, 2), 2.0)
  scores = {"start_logits": np.log([[1.0, 2.0, 1.0], [3.0, 1.0, 1.0]]),
            "end_logits": np.log([[1.0, 1.0, 1.0], [1.0, 1.0, 4.0]])}
  start, end = long_video.whole_video_probabilities(scores, plan, None)
  np.testing.assert_allclose(start, np.array([1, 2, 3, 1, 1]) / 8)
  np.testing.assert_allclose(end, np.array([1, 1, 1, 1, 4]) / 8)
  # With the paragraph branch: (p_v + alpha p_c) / (1 + alpha).
  scores.update(paragraph_start_logits=np.zeros((2, 3)), paragraph_end_logits=np.zeros((2, 3)))
  start, end = long_video.whole_video_probabilities(scores, plan, 0.5)
  np.testing.assert_allclose(start, (np.array([1, 2, 3, 1, 1]) / 8 + 0.5 / 5) / 1.5)
  assert start.sum() == pytest.approx(1.0) and end.sum() == pytest.approx(1.0)


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


def test_videos_of_many_actions(tmp_path):
  # The generator's longer videos with more actions (the training world of the model below).
  rng = np.random.default_rng(0)
  world = synthetic.World(rng, 16)
  for split, (low, high) in (("train", (6, 12)), ("test_ood", (1, 2))):  # test_ood keeps 1-2
    for _ in range(20):
      duration, feats, narratives, spans = synthetic.make_video(rng, world, split, (60, 120),
                                                                (6, 12))
      assert 60 <= duration <= 120 and feats.shape == (duration, 16)
      assert len(narratives) == duration and low <= len(spans) <= high
      bounds = [b for _, start, end in spans for b in (start, end)]
      assert bounds == sorted(bounds) and bounds[0] > 0 and bounds[-1] <= duration
      assert all(start < end for _, start, end in spans)
      assert len({action for action, _, _ in spans}) == len(spans)  # distinct actions
  with pytest.raises(ValueError, match="segments"):  # 24 cut points do not fit in 20 s
    synthetic.generate(str(tmp_path), videos=2, seconds=(20, 40), segments=(6, 12))


# ---------------------------------------------------------------------------------------------
# A long video made of the demo benchmark's test_ood videos back to back, and a small EMB model
# trained on videos of the same actions, many per video.


@pytest.fixture(scope="module")
def long_world(tmp_path_factory):
  """The trained model and a long video: the demo benchmark's test_ood videos back to back, with
  each annotated query whose sentence no other of them has (every segment of a test_ood video is
  annotated, so no other of them shows that action), its moment and its video's span."""
  root = tmp_path_factory.mktemp("long_video")
  # The demo's actions (the same seed and video_dim give the same visual signatures) in videos of
  # 60-120 s with 6-12 actions each: a model trained on 2-4 actions per video tells them apart
  # well enough inside one video but not across a long one (docs/predict.md "Long videos").
  world = root / "many_actions"
  synthetic.generate(str(world), videos=260, seed=0, seconds=(60, 120), segments=(6, 12))
  config = tiny_train_config(world, batch_size=16, num_epochs=15, eval_every_epochs=15,
                             log_every_steps=50)
  config.model.update(hidden=32, num_heads=4, dropout=0.0)
  config.optimizer.learning_rate = 2e-3
  build_records(config, progress=False)
  workdir = root / "emb"
  train.train_and_evaluate(config, str(workdir), progress=False)
  demo = root / "demo"
  synthetic.generate(str(demo), videos=260, seed=0)
  durations = read_durations(str(demo / "charades.json"))
  pairs = {}
  for line in (demo / "charades_sta_test_ood.txt").read_text().splitlines():
    if line.strip():
      head, sentence = line.split("##")
      vid, start, end = head.split()
      pairs.setdefault(vid, []).append((sentence, float(start), float(end)))
  videos = sorted(pairs)
  features, queries, offset = [], [], 0.0
  for vid in videos:
    features.append(np.load(demo / "features" / f"{vid}.npy"))
    others = {s for v in videos if v != vid for s, _, _ in pairs[v]}
    queries += [(s, (offset, offset + durations[vid]), (offset + a, offset + b))
                for s, a, b in pairs[vid] if s not in others]
    offset += durations[vid]
  longest = max(len(np.load(f)) for f in (world / "features").glob("*.npy"))
  return {"workdir": str(workdir), "features": np.concatenate(features), "duration": offset,
          "queries": queries, "longest": longest}


def test_the_long_video_is_answered_from_its_windows(long_world):
  features, duration = long_world["features"], long_world["duration"]
  assert len(features) > 128  # more than the model's budget
  query = long_world["queries"][0][0]
  windowed = Predictor.from_workdir(long_world["workdir"])  # auto
  result, = windowed.predict_features(features, duration, [query], top_k=3)
  plan, n = result.plan, len(features)
  # Synthetic features are one row per second, as training's: the video keeps its rows, in
  # windows as long as the longest training video.
  assert plan.mode == "windows" and plan.snippets == n
  assert plan.snippet_seconds == pytest.approx(1.0) and plan.window == long_world["longest"]
  # Each window's logits, one window at a time through the library's forward (no batching, no
  # padding); each snippet's largest over the windows covering it; one softmax over the video.
  config, variables = inference.load_variables(long_world["workdir"])
  ids = np.array(query_ids(config, windowed.vocabulary, [query]), np.int32)
  logits = {"start_logits": [], "end_logits": []}
  for s in plan.starts:
    window = features[s:s + plan.window][None]
    out = inference.forward(config, variables, {
        "video": window, "video_mask": np.ones(window.shape[:2], np.float32), "word_ids": ids,
        "query_mask": np.ones(ids.shape, np.float32)})
    for key, values in logits.items():
      values.append(np.asarray(out[key][0], np.float64))
  probabilities = []
  for key, values in logits.items():
    stitched = np.array([max(values[w][t - s] for w, s in enumerate(plan.starts)
                             if s <= t < s + plan.window) for t in range(n)])
    e = np.exp(stitched - stitched.max())
    probabilities.append(e / e.sum())
  p_start, p_end = probabilities
  np.testing.assert_allclose(result.start_prob, p_start, rtol=1e-4, atol=1e-8)
  np.testing.assert_allclose(result.end_prob, p_end, rtol=1e-4, atol=1e-8)
  # The top moment: the most probable span no longer than a window, by brute force.
  p, i, j = max((p_start[i] * p_end[j], i, j) for i in range(n)
                for j in range(i, min(n, i + plan.window)))
  top = result.moments[0]
  assert (top.start_index, top.end_index) == (i, j)
  assert top.probability == pytest.approx(p, rel=1e-4)
  assert (top.start, top.end) == pytest.approx((i, j + 1.0))  # 1 s snippets
  # The other moments overlap the better ones by at most the NMS IoU.
  moments = result.moments
  assert [m.probability for m in moments] == sorted((m.probability for m in moments),
                                                    reverse=True)
  for k, m in enumerate(moments):
    for better in moments[:k]:
      assert metrics.iou(m.start, m.end, better.start, better.end) <= 0.5
  # The highlight curve: each window answered alone by the pooled path (its rows as a short
  # video), the largest value at each snippet.
  alone = Predictor.from_workdir(long_world["workdir"], long="pool")
  answers = [alone.predict_features(features[s:s + plan.window], float(plan.window), [query],
                                    top_k=1)[0] for s in plan.starts]
  highlight = np.max([np.pad(a.highlight, (s, n - s - plan.window), constant_values=-1.0)
                      for s, a in zip(plan.starts, answers)], axis=0)
  np.testing.assert_allclose(result.highlight, highlight, rtol=1e-5, atol=1e-7)
  # Pooled instead: 128 snippets over the whole video.
  pooled, = alone.predict_features(features, duration, [query], top_k=1)
  assert pooled.plan.mode == "pool" and len(pooled.start_prob) == 128


def test_the_top_moment_lies_in_the_querys_video(long_world):
  predictor = Predictor.from_workdir(long_world["workdir"])
  queries = long_world["queries"]
  results = predictor.predict_features(long_world["features"], long_world["duration"],
                                        [q for q, _, _ in queries], top_k=1)
  inside = [video[0] <= r.moments[0].start and r.moments[0].end <= video[1]
            for r, (_, video, _) in zip(results, queries)]
  # A top moment drawn at random lies in the query's video for about one query in 26 (the
  # video's share of the long one); a model that tells the query's video from the others, for
  # most of them.
  chance = np.mean([(video[1] - video[0]) / long_world["duration"] for _, video, _ in queries])
  assert chance < 0.1
  assert sum(inside) >= 0.5 * len(inside), (sum(inside), len(inside), inside)
