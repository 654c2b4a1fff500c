"""Long videos: the pooled and the windowed paths of tea_apps.api side by side (R1@0.3/0.5/0.7,
mIoU and seconds) on long videos made of many demo videos of one split back to back.

    python bench/long_video.py [--workdir RUN] [--splits test_ood,test] [--per-long 8]
        [--longs 6] [--window N] [--stride N] [--nms-iou 0.5] [--seed 0] [--out DIR]
        [--model tea|emb] [--epochs 30] [--dropout 0.0] [--learning-rate 1e-3]
        [--seconds 20 40] [--segments 2 4]

Without --workdir it first trains a small model (configs/demo.py, `--model tea` or emb, hidden
32, `--epochs`, `--dropout`, `--learning-rate`) on a fresh synthetic benchmark
(data_prep.synthetic, `--videos`) in --out. Its defaults differ from the demo's (dropout 0.2, 20
epochs at 5e-4): with the demo's, a model of this size learns where the actions are and not which
one the query names (it answers every query of a video alike); without dropout it learns that
within ~20 epochs, so that the table measures the paths with a model that grounds queries.
`--seconds` and `--segments` make the training videos longer with more actions each (the demo's
2-4 per video teach a model to tell an action from the few others of one video, not from all the
actions of a long one); the long videos are then made of a demo benchmark's videos (the same
actions: same seed) generated beside it in --out. Each
long video is `--per-long` videos of the split drawn at random (seeded), their feature rows
concatenated and, for TEA models, their narratives shifted to the long video's time. Its queries
are the annotated queries of those videos whose sentence is not annotated in another of them (a
synthetic query names one action; in test_ood every segment of a video is annotated, so the others
do not show it; in test a segment starting in a video's last 40% is not annotated, so a few true
matches elsewhere count as misses); the truth is the annotated moment shifted by its video's
offset. The pooled path reduces the whole video to max_snippets snippets, as the records do; the
windowed path reads it at the training snippet rate in windows merged by NMS
(tea_apps/long_video.py). Both are timed after a first call that compiles them on each long video
(total seconds over all queries, one query per call). Before the table, how often the model gives
every query of one video the same moment (a model that ignores the query cannot tell the query's
video from the others, whatever the path), and in the table the share of top moments lying inside
the query's own video (chance: about one in --per-long). Prints figures, asserts nothing.
"""

import argparse
import os
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax  # noqa: E402
import ml_collections  # noqa: E402
import numpy as np  # noqa: E402

from data_prep.annotations import read_annotations, read_durations  # noqa: E402
from data_prep.narratives import read_narratives  # noqa: E402
from tea_apps.api import Predictor  # noqa: E402
from tea_jax import metrics  # noqa: E402
from tea_jax import workdir as workdir_lib  # noqa: E402
from tea_jax.data.schema import data_path  # noqa: E402


def train_model(out: str, variant: str, videos: int, epochs: int, dropout: float,
                learning_rate: float, seconds: tuple[int, int], segments: tuple[int, int]) -> str:
  """A small `variant` (emb or tea) workdir trained on a fresh synthetic benchmark under `out`
  (videos of `seconds` with `segments` actions)."""
  # pylint: disable=import-outside-toplevel
  from configs import demo
  from data_prep import synthetic
  from data_prep.build_records import build_records
  from tea_jax import train
  data, workdir = os.path.join(out, "data"), os.path.join(out, variant)
  config = demo.get_config(variant)
  config.unlock()
  config.data.root = data
  config.model.update(hidden=32, num_heads=4, dropout=dropout)
  config.update(num_epochs=epochs)
  config.optimizer.learning_rate = learning_rate
  config.data.eval_splits = ("test", "test_ood")
  if not os.path.isfile(os.path.join(workdir, "metrics.json")):
    if not os.path.isdir(data):
      synthetic.generate(data, videos=videos, seed=0, video_dim=config.model.video_dim,
                         word_dim=config.model.word_dim, seconds=seconds, segments=segments)
    build_records(config, progress=False)
    train.train_and_evaluate(config, workdir, progress=False)
  return workdir


def long_videos(predictor: Predictor, data, split: str, per_long: int, longs: int, seed: int):
  """[(features, duration, narratives, [(query, truth, video)])] of `longs` long videos of the
  split of `data` (a config's data section); `video` is the (start, end) seconds of the query's
  own video in the long one."""
  durations = read_durations(data_path(data, "durations")) if data.durations else None
  pairs = read_annotations(os.path.join(data.root, data.splits[split]), durations).pairs
  by_video = {}
  for pair in pairs:
    by_video.setdefault(pair.video_id, []).append(pair)
  narratives = {}
  if predictor.uses_narrative:
    narratives = read_narratives(data_path(data, "narratives"))[0]
  features_dir = data_path(data, "features")
  rng = np.random.default_rng(seed)
  out = []
  for _ in range(longs):
    chosen = rng.choice(sorted(by_video), size=min(per_long, len(by_video)), replace=False)
    rows, items, queries, offset = [], [], [], 0.0
    for vid in chosen:
      rows.append(np.load(os.path.join(features_dir, f"{vid}.npy")))
      others = {p.sentence for v in chosen if v != vid for p in by_video[v]}
      span = (offset, offset + by_video[vid][0].duration)
      queries += [(p.sentence, (offset + p.start, offset + p.end), span) for p in by_video[vid]
                  if p.sentence not in others]
      items += [(offset + t, text) for t, text in narratives.get(vid, [])]
      offset += by_video[vid][0].duration
    out.append((np.concatenate(rows), offset, items or None, queries))
  return out


def evaluate(predictor: Predictor, videos) -> tuple[dict, float, float, str]:
  """(metrics.summarise of the top moments' IoU, the percentage of top moments inside the query's
  own video, seconds over all queries, the plan of the first video)."""
  ious, inside, seconds = [], [], 0.0
  for features, duration, items, queries in videos:
    if not queries:
      continue
    # Compiles the shapes of this video's windows (their number varies with its length).
    predictor.predict_features(features, duration, [queries[0][0]], items, top_k=1)
    for query, truth, video in queries:
      started = time.perf_counter()
      result, = predictor.predict_features(features, duration, [query], items, top_k=1)
      seconds += time.perf_counter() - started
      best = result.moments[0]
      ious.append(metrics.iou(best.start, best.end, *truth))
      inside.append(video[0] <= best.start and best.end <= video[1])
  plan = predictor.plan(len(videos[0][0]), videos[0][1])
  return (metrics.summarise(np.array(ious)), 100.0 * np.mean(inside), seconds,
          plan.describe(len(videos[0][0])))


def answered_alike(predictor: Predictor, data, split: str) -> tuple[int, int]:
  """(videos of the split of `data` with several queries, those whose queries all get the same
  top moment), each video answered alone (pooled, as evaluation reads it)."""
  durations = read_durations(data_path(data, "durations")) if data.durations else None
  by_video = {}
  for pair in read_annotations(os.path.join(data.root, data.splits[split]), durations).pairs:
    by_video.setdefault(pair.video_id, []).append(pair)
  narratives = {}
  if predictor.uses_narrative:
    narratives = read_narratives(data_path(data, "narratives"))[0]
  several = alike = 0
  for vid, pairs in by_video.items():
    if len(pairs) < 2:
      continue
    features = np.load(os.path.join(data_path(data, "features"), f"{vid}.npy"))
    results = predictor.predict_features(features, pairs[0].duration,
                                         [p.sentence for p in pairs], narratives.get(vid), 1)
    several += 1
    alike += len({(r.moments[0].start_index, r.moments[0].end_index) for r in results}) == 1
  return several, alike


def main(argv=None) -> None:
  """Trains a model when none is given, then prints the table."""
  parser = argparse.ArgumentParser(description=" ".join(__doc__.split("\n\n")[0].split()))
  parser.add_argument("--workdir", help="a workdir trained on the demo data (default: train one)")
  parser.add_argument("--out", help="where to train it (default: a temporary folder)")
  parser.add_argument("--model", choices=("tea", "emb"), default="tea", help="the model trained")
  parser.add_argument("--videos", type=int, default=260, help="synthetic videos to train on")
  parser.add_argument("--epochs", type=int, default=30)
  parser.add_argument("--dropout", type=float, default=0.0)
  parser.add_argument("--learning-rate", type=float, default=1e-3)
  parser.add_argument("--seconds", type=int, nargs=2, default=(20, 40), metavar=("MIN", "MAX"),
                      help="training video lengths (the demo's: 20 40)")
  parser.add_argument("--segments", type=int, nargs=2, default=(2, 4), metavar=("MIN", "MAX"),
                      help="actions per training video (the demo's: 2 4)")
  parser.add_argument("--splits", default="test_ood,test")
  parser.add_argument("--per-long", type=int, default=8, help="videos per long video")
  parser.add_argument("--longs", type=int, default=6, help="long videos per split")
  parser.add_argument("--window", type=int)
  parser.add_argument("--stride", type=int)
  parser.add_argument("--nms-iou", type=float, default=0.5)
  parser.add_argument("--seed", type=int, default=0)
  args = parser.parse_args(argv)
  out = args.out or tempfile.mkdtemp(prefix="long_video_")
  workdir = args.workdir or train_model(out, args.model, args.videos, args.epochs, args.dropout,
                                        args.learning_rate, tuple(args.seconds),
                                        tuple(args.segments))
  paths = {mode: Predictor.from_workdir(workdir, long=mode, window=args.window,
                                        stride=args.stride, nms_iou=args.nms_iou)
           for mode in ("pool", "windows")}
  some = paths["windows"]
  word_vectors = data_path(some.config.data, "word_vectors") if some.uses_narrative else None
  for predictor in paths.values():
    predictor.word_vectors = word_vectors
  data = some.config.data
  if (tuple(args.seconds), tuple(args.segments)) != ((20, 40), (2, 4)):
    # Long videos of demo videos (the same actions: the training benchmark's seed).
    from data_prep import synthetic  # pylint: disable=import-outside-toplevel
    data = ml_collections.ConfigDict(data.to_dict())
    data.root = os.path.join(out, "demo_data")
    if not os.path.isdir(data.root):
      synthetic.generate(data.root, videos=args.videos, seed=0,
                         video_dim=some.config.model.video_dim, word_dim=some.config.model.word_dim)
    print(f"long videos of the demo benchmark in {data.root}")
  training = some.training_snippets()
  print(f"backend {jax.default_backend()}; workdir {workdir} ({some.label}); training snippets: "
        f"median {training.seconds:.3g} s, 95th percentile {training.coarsest:.3g} s, longest "
        f"{training.longest} ({training.videos} videos)")
  if os.path.isfile(os.path.join(workdir, "metrics.json")):
    splits = workdir_lib.read_metrics(workdir)["splits"]
    print("single videos of the training benchmark (metrics.json, R1@0.5 / mIoU): " + ", ".join(
        f"{name} {m['r1@0.5']:.1f} / {m['miou']:.1f}" for name, m in splits.items()))
  for split in args.splits.split(","):
    several, alike = answered_alike(paths["pool"], data, split)
    print(f"{split}: {alike} of the {several} videos with several queries get one moment for "
          f"all of them")
  print("| split | path | how a long video is read (the first) | queries | R1@0.3 | R1@0.5 | "
        "R1@0.7 | mIoU | inside its video (%) | seconds |")
  print("| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |")
  for split in args.splits.split(","):
    videos = long_videos(some, data, split, args.per_long, args.longs, args.seed)
    for mode, predictor in paths.items():
      summary, inside, seconds, plan = evaluate(predictor, videos)
      print(f"| {split} | {mode} | {plan} | {summary['count']} | {summary['r1@0.3']:.1f} | "
            f"{summary['r1@0.5']:.1f} | {summary['r1@0.7']:.1f} | {summary['miou']:.1f} | "
            f"{inside:.1f} | {seconds:.1f} |", flush=True)


if __name__ == "__main__":
  main()
