"""`python -m tea_apps.predict --video`: a generated mp4 through random I3D weights in the public
layout, a tiny random LLaVA, generated GloVe and a TEA model trained for one step on I3D-width
synthetic features; the benchmark-pair mode; an imported EMB workdir; the cache; the plot.

Independent checks: the frames of a 24 fps video decoded plainly (every frame kept), prepared and
cut into windows by hand must be exactly what the network was given, and the features the
network's rows in window order; the narration must be the narrator's captions of the frames
sampled once a second; and the answers must equal `--features` + `--narratives` on those files,
the path tests/test_predict.py holds against evaluation on the built records. The benchmark-pair
mode must give what evaluation wrote for that pair.
"""

import json
import os
import pathlib
import shutil
import subprocess
import sys

import av
import numpy as np
import pytest
import torch
from conftest import REPO
from PIL import Image
from test_extract_features import random_public_weights
from test_import_emb import random_state_dict

from configs import demo
from data_prep import synthetic
from data_prep.build_records import build_records
from data_prep.frames import sample_frames
from data_prep.narration import narrators
from data_prep.testing.videos import write_moving_video
from tea_apps import predict, video_inputs
from tea_apps.api import Predictor
from tea_jax import evaluate, import_emb, train
from tea_jax.data.schema import records_dir
from tea_jax.errors import InputError
from tea_jax.i3d import extractor as i3d_extractor
from tea_jax.i3d import recipe

SECONDS, FPS = 2, 24  # 48 frames: windows [0, 24) and [23, 47), 4 feature rows
QUERIES = ["person opens the door.", "person washes the cup."]
TRUTHS = [(0.5, 1.5), (1.0, 2.0)]
MAX_NEW_TOKENS = 6


@pytest.fixture(scope="module")
def world(tmp_path_factory, llava_dir):
  """A TEA workdir trained one step on 1024-d synthetic features and evaluated, I3D weights in
  the public layout, a tiny random LLaVA directory and a 2-second 24 fps mp4."""
  root = tmp_path_factory.mktemp("predict_video")
  data = root / "data"
  synthetic.generate(str(data), videos=12, seed=4, video_dim=1024, word_dim=24)
  config = demo.get_config()
  config.unlock()
  config.data.root = str(data)
  # TEA's narrative merge (the paragraph branch, also a narrative reader, would double the
  # compilation time; tests/test_predict.py runs it).
  config.model.update(video_dim=1024, word_dim=24, narrative_dim=24, hidden=16, num_heads=2,
                      merge="concat", paragraph_branch=False)
  config.update(batch_size=8, eval_batch_size=8, num_epochs=1, max_steps=1, log_every_steps=1)
  config.data.eval_splits = ("test",)
  build_records(config, progress=False)
  workdir = root / "tea"
  train.train_and_evaluate(config, str(workdir), progress=False)
  evaluate.evaluate_checkpoint(config, str(workdir), progress=False)  # predictions_test.jsonl
  weights = root / "rgb_charades.pt"
  torch.save({k: torch.from_numpy(v) for k, v in random_public_weights(157).items()}, weights)
  llava = llava_dir
  video = root / "kitchen.mp4"
  write_moving_video(str(video), SECONDS, fps=FPS, size=(96, 72))
  return {"root": root, "data": data, "workdir": workdir, "weights": weights, "llava": llava,
          "video": video, "cache": root / "cache", "config": config}


def video_argv(world, queries=QUERIES, *extra) -> list[str]:
  argv = ["--workdir", str(world["workdir"]), "--video", str(world["video"]),
          "--i3d-weights", str(world["weights"]), "--narrator-model", world["llava"],
          "--narrator-max-new-tokens", str(MAX_NEW_TOKENS),
          "--word-vectors", str(world["data"] / "glove.txt"), "--cache", str(world["cache"]),
          "--top-k", "3"]
  for query in queries:
    argv += ["--query", query]
  return argv + list(extra)


@pytest.fixture(scope="module")
def first_run(world):
  """The first --video run (features and narration computed), recording what the I3D network was
  given and gave back."""
  calls = []
  original = i3d_extractor._window_features

  def spy(model, variables, windows):
    rows = original(model, variables, windows)
    calls.append((np.asarray(windows), np.asarray(rows)))
    return rows

  plot = world["root"] / "first.png"
  truths = [str(x) for truth in TRUTHS for x in ("--truth",) + truth]
  with pytest.MonkeyPatch.context() as patch:
    patch.setattr(i3d_extractor, "_window_features", spy)
    rows, plot_path = predict.run(predict.parse_args(
        video_argv(world, QUERIES, "--plot", str(plot), *truths)))
  return {"rows": rows, "plot": plot_path, "calls": calls}


def cache_folder(world):
  return world["cache"] / (world["video"].name + video_inputs.CACHE_SUFFIX)


def cached_narration(world):
  """The narration file of the cache (not its failures file)."""
  found, = [p for p in cache_folder(world).glob("narration-*.jsonl")
            if not p.name.endswith(".failures.jsonl")]
  return found


def test_video_answers_are_moments_of_the_video(first_run):
  rows = first_run["rows"]
  assert [r["query"] for r in rows] == QUERIES
  v_len = 2 * -(-SECONDS * FPS // 24)  # two rows per 24-frame window
  for row, truth in zip(rows, TRUTHS):
    assert row["duration"] == pytest.approx(SECONDS)
    moments = row["moments"]
    probs = [m["probability"] for m in moments]
    assert len(moments) == 3 and probs == sorted(probs, reverse=True) and 0 < probs[0] <= 1
    for m in moments:
      assert 0 <= m["start_index"] <= m["end_index"] < v_len
      assert m["start"] == pytest.approx(m["start_index"] * SECONDS / v_len, abs=1e-3)
      assert m["end"] == pytest.approx((m["end_index"] + 1) * SECONDS / v_len, abs=1e-3)
    best = moments[0]
    inter = max(0.0, min(best["end"], truth[1]) - max(best["start"], truth[0]))
    union = max(best["end"], truth[1]) - min(best["start"], truth[0])
    assert row["truth"] == {"start": truth[0], "end": truth[1]}
    assert row["iou"] == pytest.approx(inter / union, abs=1e-4)


def test_the_network_saw_the_windows_cut_by_hand(world, first_run):
  with av.open(str(world["video"])) as container:  # 24 fps: every frame is kept
    frames = [f.to_ndarray(format="rgb24") for f in container.decode(video=0)]
  assert len(frames) == SECONDS * FPS
  crops = np.stack([recipe.prepare_frame(f) for f in frames])
  # N = 48: windows start at 0 and 24; the second ends at N - 1 = 47 and is moved back to 23.
  by_hand = np.stack([crops[0:24], crops[23:47]])
  (windows, rows), = first_run["calls"]  # one jitted call: the batch is no larger than 2 windows
  np.testing.assert_array_equal(windows, by_hand)
  cached = list(cache_folder(world).glob("i3d-*.npy"))
  assert len(cached) == 1
  np.testing.assert_array_equal(np.load(cached[0]), rows.reshape(4, 1024))


def test_narration_is_the_narrators_captions_once_a_second(world, first_run):
  del first_run
  images = [(t, image) for t, image in sample_frames(str(world["video"]), 1.0)]
  assert [t for t, _ in images] == pytest.approx([0.0, 1.0], abs=0.05)
  narrator = narrators.LlavaNarrator(world["llava"], "cpu", "float32", MAX_NEW_TOKENS)
  captions = narrator.caption([image for _, image in images])
  line, = [json.loads(x) for x in cached_narration(world).read_text().splitlines()]
  assert [n["text"] for n in line["narratives"]] == captions
  assert [n["t"] for n in line["narratives"]] == [t for t, _ in images]


def test_video_answers_equal_the_features_path(world, first_run, tmp_path, capsys):
  features, = cache_folder(world).glob("i3d-*.npy")
  line = json.loads(cached_narration(world).read_text())
  narratives = tmp_path / "narratives.jsonl"
  narratives.write_text(json.dumps({**line, "video_id": "kitchen"}) + "\n")
  shutil.copy(features, tmp_path / "kitchen.npy")
  argv = ["--workdir", str(world["workdir"]), "--features", str(tmp_path / "kitchen.npy"),
          "--duration", str(SECONDS), "--narratives", str(narratives), "--word-vectors",
          str(world["data"] / "glove.txt"), "--top-k", "3"]
  for query in QUERIES:
    argv += ["--query", query]
  assert predict.main(argv) == 0
  out = [json.loads(x) for x in capsys.readouterr().out.splitlines()]
  for row, video_row in zip(out, first_run["rows"]):
    # One schema whatever the input (the README's): the id, the file when known, the duration.
    common = {"video_id", "video", "duration", "query", "moments"}
    assert set(row) == common and set(video_row) - {"truth", "iou"} == common
    assert (video_row["video_id"], video_row["video"]) == ("kitchen", str(world["video"]))
    assert row["video"] is None and row["duration"] == pytest.approx(video_row["duration"])
    assert row["video_id"] == "kitchen" and row["query"] == video_row["query"]
    for m, n in zip(row["moments"], video_row["moments"]):
      assert (m["start_index"], m["end_index"]) == (n["start_index"], n["end_index"])
      assert m["probability"] == pytest.approx(n["probability"], rel=1e-5)


def test_the_plot_is_a_picture(first_run):
  path = first_run["plot"]
  assert os.path.isfile(path) and open(path, "rb").read(8) == b"\x89PNG\r\n\x1a\n"
  image = np.asarray(Image.open(path).convert("RGB"))
  height, width, _ = image.shape
  assert width > 1000 and height > 800  # frames, narratives, and two (curves, moments) panels
  # Not blank: the frames, the curves and the bars put many colours on it.
  assert len(np.unique(image.reshape(-1, 3), axis=0)) > 200


def failing(what):
  def fail(*args, **kwargs):
    raise AssertionError(f"{what} was called: the cache was not used")
  return fail


def test_a_second_query_reads_the_cache(world, first_run, monkeypatch, capsys):
  del first_run
  monkeypatch.setattr(video_inputs, "decode_clip", failing("video decoding for I3D"))
  monkeypatch.setattr(video_inputs, "load_weights", failing("I3D weights loading"))
  monkeypatch.setitem(narrators.BACKENDS, "llava", failing("the narrator"))
  query = "person holds the book."
  assert predict.main(video_argv(world, [query, QUERIES[0]])) == 0
  rows = [json.loads(x) for x in capsys.readouterr().out.splitlines()]
  assert [r["query"] for r in rows] == [query, QUERIES[0]] and len(rows[0]["moments"]) == 3
  assert sorted(p.name.split("-")[0] for p in cache_folder(world).iterdir()
                if not p.name.endswith(".failures.jsonl") and p.is_file()) == \
      ["i3d", "i3d", "narration"]  # features (.npy + .json) and narration, once


def test_the_api_answers_as_the_command(world, first_run, monkeypatch, tmp_path):
  monkeypatch.setattr(video_inputs, "decode_clip", failing("video decoding for I3D"))
  monkeypatch.setattr(video_inputs, "load_weights", failing("I3D weights loading"))
  monkeypatch.setitem(narrators.BACKENDS, "llava", failing("the narrator"))
  predictor = Predictor.from_workdir(
      str(world["workdir"]), i3d_weights=str(world["weights"]), narrator_model=world["llava"],
      narrator_max_new_tokens=MAX_NEW_TOKENS, word_vectors=str(world["data"] / "glove.txt"),
      cache_dir=str(world["cache"]))
  results = predictor.predict(str(world["video"]), QUERIES, top_k=3)  # all from the cache
  for result, row in zip(results, first_run["rows"]):
    assert [m.to_dict() for m in result.moments] == row["moments"]
    assert result.duration == pytest.approx(row["duration"])
  broken = tmp_path / "broken.mp4"
  broken.write_bytes(b"\x00not a video" * 64)
  monkeypatch.undo()
  with pytest.raises(InputError, match=f"{broken}: cannot open"):
    predictor.predict(str(broken), QUERIES[:1])


def test_changed_inputs_are_recomputed(world, first_run, monkeypatch):
  del first_run
  monkeypatch.setitem(narrators.BACKENDS, "llava", failing("the narrator"))
  monkeypatch.setattr(video_inputs, "load_weights", failing("I3D weights loading"))
  # Another narration interval: the features still come from the cache, the narration does not.
  with pytest.raises(AssertionError, match="the narrator was called"):
    predict.run(predict.parse_args(video_argv(world, QUERIES[:1], "--narrator-interval", "0.5")))
  # A video file written again (new modification time): its features are recomputed.
  stat = os.stat(world["video"])
  try:
    os.utime(world["video"], ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))
    with pytest.raises(AssertionError, match="I3D weights loading was called"):
      predict.run(predict.parse_args(video_argv(world, QUERIES[:1])))
  finally:
    os.utime(world["video"], ns=(stat.st_atime_ns, stat.st_mtime_ns))


def test_pair_mode_gives_what_evaluation_gave(world, tmp_path, capsys):
  predictions = [json.loads(x) for x in
                 (world["workdir"] / "predictions_test.jsonl").read_text().splitlines()]
  row = predictions[1]
  plot = tmp_path / "pair.png"
  assert predict.main(["--workdir", str(world["workdir"]), "--split", "test", "--pair-index",
                       str(row["pair_index"]), "--plot", str(plot)]) == 0
  out = json.loads(capsys.readouterr().out)
  assert set(out) == {"video_id", "video", "duration", "split", "pair_index", "query", "moments",
                      "truth", "iou"}
  assert (out["split"], out["pair_index"], out["video"]) == ("test", row["pair_index"], None)
  assert (out["video_id"], out["query"]) == (row["video_id"], row["query"])
  best = out["moments"][0]
  assert best["start"] == pytest.approx(row["pred_start"], abs=1e-3)
  assert best["end"] == pytest.approx(row["pred_end"], abs=1e-3)
  assert best["probability"] == pytest.approx(row["score"], rel=1e-4)
  assert out["truth"]["start"] == pytest.approx(row["true_start"], abs=1e-3)
  assert out["truth"]["end"] == pytest.approx(row["true_end"], abs=1e-3)
  assert plot.stat().st_size > 10_000


@pytest.fixture(scope="module")
def emb_workdir(world):
  """An EMB checkpoint in EMB's own layout (random weights), imported with the TEA run's
  vocabulary."""
  root = world["root"]
  records = pathlib.Path(records_dir(world["config"].data))
  words = json.loads((records / "vocab.json").read_text())
  sd = random_state_dict(seed=5)
  sd["embedding_net.word_emb.glove_vec"] = np.random.default_rng(0).normal(
      size=(len(words) - 2, 300)).astype(np.float32)
  checkpoint = root / "model_best.pth.tar"
  torch.save({"state_dict": {k: torch.from_numpy(x) for k, x in sd.items()}}, checkpoint)
  (root / "words.txt").write_text("\n".join(words[2:]) + "\n")
  workdir = root / "emb"
  import_emb.write_workdir(str(checkpoint), str(workdir), words_file=str(root / "words.txt"))
  return workdir


def test_an_imported_emb_workdir_on_the_video(world, first_run, emb_workdir, tmp_path, capsys):
  del first_run
  emb = ["--workdir", str(emb_workdir), "--video", str(world["video"]), "--i3d-weights",
         str(world["weights"]), "--cache", str(world["cache"]), "--query", QUERIES[0]]
  assert predict.main(emb) == 0  # no narrator, no word vectors: EMB reads no narratives
  alone = json.loads(capsys.readouterr().out)
  features, = cache_folder(world).glob("i3d-*.npy")
  assert predict.main(["--workdir", str(emb_workdir), "--features", str(features), "--duration",
                       str(SECONDS), "--query", QUERIES[0]]) == 0
  assert json.loads(capsys.readouterr().out)["moments"] == alone["moments"]
  plot = tmp_path / "compare.png"
  assert predict.main(video_argv(world, QUERIES[:1], "--compare-workdir", str(emb_workdir),
                                 "--plot", str(plot), "--truth", "0.5", "1.5")) == 0
  row = json.loads(capsys.readouterr().out)
  assert row["compare"]["moments"][0] == alone["moments"][0]
  assert row["compare"]["workdir"] == str(emb_workdir)
  assert plot.stat().st_size > 10_000


def test_bad_inputs_are_one_line_errors(world, tmp_path, capsys):
  narrow = tmp_path / "narrow"
  narrow.mkdir()
  config = json.loads((world["workdir"] / "config.json").read_text())
  config["model"]["video_dim"] = 64
  (narrow / "config.json").write_text(json.dumps(config))
  shutil.copy(world["workdir"] / "vocab.json", narrow / "vocab.json")
  broken, short = tmp_path / "broken.mp4", tmp_path / "short.mp4"
  broken.write_bytes(b"\x00not a video" * 64)
  write_moving_video(str(short), 8 / FPS, fps=FPS, size=(96, 72))  # 8 frames: too short
  base = video_argv(world, QUERIES[:1])
  cases = [
      (["--workdir", str(narrow)], "reads 64-d video features"),
      (["--video", str(tmp_path / "missing.mp4")], "video not found"),
      (["--video", str(broken)], "cannot open"),
      (["--video", str(short)], "too short"),
      (["--i3d-weights", str(tmp_path / "none.pt")], "I3D weights not found"),
      (["--truth", "0", "1", "--truth", "1", "2"], "--truth given 2 times for 1 queries"),
      (["--truth", "1.5", "0.5"], "expected 0 <= START < END"),
      (["--duration", "3"], "read from its file"),
      (["--split", "test"], "exactly one of --video, --features, --split"),
  ]
  for extra, message in cases:
    assert predict.main(base + extra) == 2, message
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1, err
  tea_without_narrator = [a for a in base if a not in ("--narrator-model", world["llava"])]
  assert predict.main(tea_without_narrator) == 2
  assert "reads narratives: pass --narrator-model" in capsys.readouterr().err
  pair = ["--workdir", str(world["workdir"]), "--split", "test", "--pair-index", "9999"]
  assert predict.main(pair) == 2
  assert "has no pair 9999" in capsys.readouterr().err
  for video in (broken, short):  # nothing was cached for a video that failed
    assert not (world["cache"] / (video.name + video_inputs.CACHE_SUFFIX)).exists()


def test_synthetic_videos_show_the_annotated_actions(tmp_path):
  plain, with_videos = tmp_path / "plain", tmp_path / "videos"
  synthetic.generate(str(plain), videos=3, seed=7)
  synthetic.generate(str(with_videos), videos=3, seed=7, write_videos=True)
  for name in ("charades_sta_train.txt", "narratives.jsonl", "glove.txt", "charades.json"):
    assert (plain / name).read_text() == (with_videos / name).read_text()  # no random draw taken
  durations = json.loads((with_videos / "charades.json").read_text())
  for vid, info in durations.items():
    np.testing.assert_array_equal(np.load(plain / "features" / f"{vid}.npy"),
                                  np.load(with_videos / "features" / f"{vid}.npy"))
    assert video_inputs.duration_seconds(str(with_videos / "videos" / f"{vid}.mp4")) == \
        pytest.approx(info["duration"])
  third = {synthetic.third_person(v): v for v in synthetic.VERBS}
  line = (with_videos / "charades_sta_train.txt").read_text().splitlines()[0]
  vid, start, rest = line.split(" ", 2)
  end, sentence = rest.split("##")
  words = sentence.rstrip(".").split()  # "person washes the book"
  colour = synthetic.action_colour(third[words[1]], words[3])
  frames = dict(sample_frames(str(with_videos / "videos" / f"{vid}.mp4"), 0.5))
  inside = np.asarray(frames[(float(start) + float(end)) / 2 // 0.5 * 0.5])
  np.testing.assert_allclose(inside[12, 12], colour, atol=12)  # the card's corner
  assert np.abs(inside[-20, -10].astype(int) - 90).max() <= 12  # the grey frame around it


importlib_spec = predict.importlib.util.find_spec


def test_predict_imports_matplotlib_only_to_plot(monkeypatch, capsys):
  code = ("import sys, tea_apps.predict; "
          "assert 'matplotlib' not in sys.modules, 'imported at module level'")
  proc = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True,
                        check=False)
  assert proc.returncode == 0, proc.stderr[-2000:]
  monkeypatch.setattr(predict.importlib.util, "find_spec",
                      lambda name: None if name == "matplotlib" else importlib_spec(name))
  assert predict.main(["--workdir", "w", "--video", "v.mp4", "--i3d-weights", "w.pt",
                       "--query", "q", "--plot", "x.png"]) == 2
  assert "--plot needs matplotlib" in capsys.readouterr().err
