"""`python -m data_prep.extract_features` on generated videos with random weights saved in the
public PyTorch layout: outputs, feature_shapes.json, failures, shards, and a resume after SIGKILL.

Independent checks: the frames of a 24 fps video are decoded plainly (every frame, no resampling),
windowed by hand and run through the network one batch, and must equal the command's rows; shard
outputs and a killed-then-resumed run must give the same files as one uninterrupted run."""

import json
import os
import signal
import subprocess
import sys
import time

import av
import numpy as np
import pytest
import torch
from conftest import REPO

from data_prep import extract_features
from data_prep.narration.pipeline import select_videos
from data_prep.testing.videos import write_indexed_video
from tea_jax.i3d import convert, importer, recipe
from tea_jax.i3d.extractor import Extractor

# id: (frames, fps). Videos of N <= 24 frames at 24 fps have one window of N - 1 frames, which
# is cheaper to compute: the shard and resume tests use those only.
VIDEOS = {"long": (26, 24), "short": (25, 30), "short2": (20, 24), "tiny": (8, 24)}
CHEAP = ["broken", "short", "short2", "tiny"]
BATCH = 2


def random_public_weights(num_classes: int, seed: int = 0) -> dict:
  """He-scaled random weights in the public state_dict layout (features stay non-degenerate)."""
  rng = np.random.default_rng(seed)
  weights = {}
  for key, shape in importer.public_layout(num_classes).items():
    if key.endswith("num_batches_tracked"):
      weights[key] = np.zeros(shape, np.int64)
    elif key.endswith("conv3d.weight"):
      weights[key] = (rng.normal(size=shape) * np.sqrt(2 / np.prod(shape[1:]))).astype(np.float32)
    elif key.endswith(("bn.weight", "bn.running_var")):
      weights[key] = (1 + 0.1 * np.abs(rng.normal(size=shape))).astype(np.float32)
    else:
      weights[key] = (0.1 * rng.normal(size=shape)).astype(np.float32)
  return weights


@pytest.fixture(scope="module")
def workspace(tmp_path_factory):
  """Videos (two good, one too short, one corrupt), rgb_charades-shaped weights as a torch file
  and as a converted .npz, and one uninterrupted run of the command."""
  root = tmp_path_factory.mktemp("extract")
  videos = root / "videos"
  videos.mkdir()
  for vid, (frames, fps) in VIDEOS.items():
    write_indexed_video(str(videos / f"{vid}.mp4"), frames, fps=fps, size=(64, 48))
  (videos / "broken.mp4").write_bytes(b"\x00not a video" * 64)
  weights = root / "rgb_charades.pt"
  torch.save({k: torch.from_numpy(v) for k, v in random_public_weights(157).items()}, weights)
  convert.convert(str(weights), str(root / "rgb_charades.npz"))
  (root / "cheap.txt").write_text("\n".join(CHEAP) + "\n")
  extractor = Extractor.from_weights(str(weights), batch_size=BATCH)
  summary = extract_features.extract(extractor, select_videos(str(videos)), str(root / "full"),
                                     progress=False)
  return root, extractor, summary


def read_outputs(folder) -> dict:
  """{file name: contents} of a feature folder (arrays for .npy, parsed JSON otherwise)."""
  out = {}
  for name in sorted(os.listdir(folder)):
    path = os.path.join(folder, name)
    if name.endswith(".npy"):
      out[name] = np.load(path)
    elif name.endswith(".json"):
      with open(path, encoding="utf-8") as f:
        out[name] = json.load(f)
    elif name.endswith(".jsonl"):
      with open(path, encoding="utf-8") as f:
        out[name] = [json.loads(line) for line in f]
  return out


def assert_same_outputs(ours: dict, expected: dict) -> None:
  assert sorted(ours) == sorted(expected)
  for name, value in expected.items():
    if name.endswith(".npy"):
      np.testing.assert_array_equal(ours[name], value, err_msg=name)
    else:
      assert ours[name] == value, name


def test_outputs_shapes_and_failures(workspace):
  root, _, summary = workspace
  out = read_outputs(root / "full")
  assert sorted(out) == ["failures.jsonl", "feature_shapes.json", "long.npy", "short.npy",
                         "short2.npy"]
  # long: 26 frames -> windows [0, 24), [1, 25) -> 4 rows; short: 25 frames at 30 fps -> 20 at
  # 24 fps -> one window of 19 frames -> 2 rows; short2: 20 frames at 24 fps, the same.
  assert out["long.npy"].shape == (4, 1024) and out["short.npy"].shape == (2, 1024)
  assert out["long.npy"].dtype == np.float32 and np.all(np.isfinite(out["long.npy"]))
  assert out["feature_shapes.json"] == {"long": 4, "short": 2, "short2": 2}
  failures = {f["video_id"]: f["reason"] for f in out["failures.jsonl"]}
  assert sorted(failures) == ["broken", "tiny"]
  assert "broken.mp4" in failures["broken"] and "cannot open" in failures["broken"]
  assert "tiny.mp4" in failures["tiny"] and "too short" in failures["tiny"]
  assert summary["videos_written"] == 3 and summary["videos_failed"] == 2
  assert summary["windows"] == 4


def test_rows_equal_windows_cut_by_hand(workspace):
  root, extractor, _ = workspace
  with av.open(str(root / "videos" / "long.mp4")) as container:  # 24 fps: every frame is kept
    frames = [f.to_ndarray(format="rgb24") for f in container.decode(video=0)]
  assert len(frames) == 26
  crops = np.stack([recipe.prepare_frame(f) for f in frames])
  windows = np.stack([crops[0:24], crops[1:25]])  # the last window moved back to end at N - 1
  rows = extractor.run_windows(windows)  # (2, 2, 1024)
  np.testing.assert_allclose(np.load(root / "full" / "long.npy"), rows.reshape(4, 1024),
                             rtol=1e-6, atol=1e-6)
  assert np.abs(rows[0] - rows[1]).max() > 1e-3  # the two windows do differ


def test_rerun_skips_finished_videos_and_replaces_failures(workspace):
  root, extractor, _ = workspace
  again = extract_features.extract(extractor, select_videos(str(root / "videos")),
                                   str(root / "full"), progress=False)
  assert again["videos_skipped_as_done"] == 3 and again["videos_written"] == 0
  failures = read_outputs(root / "full")["failures.jsonl"]
  assert sorted(f["video_id"] for f in failures) == ["broken", "tiny"]  # replaced, not appended


def expected_cheap_outputs(root) -> dict:
  """The uninterrupted run's files restricted to the CHEAP videos (failures aside)."""
  full = read_outputs(root / "full")
  return {"short.npy": full["short.npy"], "short2.npy": full["short2.npy"],
          "feature_shapes.json": {"short": 2, "short2": 2}}


def test_shards_together_equal_one_run(workspace):
  root, extractor, _ = workspace
  out = str(root / "sharded")
  for index in range(2):
    videos = select_videos(str(root / "videos"), str(root / "cheap.txt"), 2, index)
    extract_features.extract(extractor, videos, out, progress=False,
                             failures_file=extract_features.failures_path(out, 2, index))
  sharded = read_outputs(out)
  # Sorted ids broken, short, short2, tiny: shard 0 has broken and short2, shard 1 short and tiny.
  assert [f["video_id"] for f in sharded.pop("failures.00000-of-00002.jsonl")] == ["broken"]
  assert [f["video_id"] for f in sharded.pop("failures.00001-of-00002.jsonl")] == ["tiny"]
  assert_same_outputs(sharded, expected_cheap_outputs(root))


def run_command(root, out) -> subprocess.Popen:
  """The command on the CHEAP videos with the converted weights; the two runs share a persistent
  compilation cache so that the second one does not compile again."""
  cmd = [sys.executable, "-m", "data_prep.extract_features", "--videos", str(root / "videos"),
         "--video-ids", str(root / "cheap.txt"), "--weights", str(root / "rgb_charades.npz"),
         "--out", str(out), "--batch-size", str(BATCH), "--decode-workers", "1"]
  env = dict(os.environ, JAX_COMPILATION_CACHE_DIR=str(root / "jax_cache"),
             JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0")
  return subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                          text=True)


def test_resume_after_sigkill_gives_the_same_files(workspace):
  root, _, _ = workspace
  out = root / "killed"
  process = run_command(root, out)
  deadline = time.time() + 240
  while not list(out.glob("*.npy")) and process.poll() is None and time.time() < deadline:
    time.sleep(0.05)
  process.send_signal(signal.SIGKILL)
  process.communicate()
  written = sorted(p.name for p in out.glob("*.npy"))
  assert written in (["short.npy"], ["short2.npy"]), f"killed too late or never wrote: {written}"
  np.load(out / written[0])  # complete despite the kill (written atomically)
  resumed = run_command(root, out)
  stdout, stderr = resumed.communicate(timeout=240)
  assert resumed.returncode == 0, stderr
  summary = json.loads(stdout)
  assert summary["videos_skipped_as_done"] == 1 and summary["videos_written"] == 1
  resumed_outputs = read_outputs(out)
  failures = resumed_outputs.pop("failures.jsonl")
  assert sorted(f["video_id"] for f in failures) == ["broken", "tiny"]
  assert_same_outputs(resumed_outputs, expected_cheap_outputs(root))


def test_bad_arguments_are_one_line_errors(workspace, tmp_path, capsys):
  root, _, _ = workspace
  bad = tmp_path / "bad.npz"
  bad.write_bytes(b"junk")
  base = ["--videos", str(root / "videos"), "--out", str(tmp_path / "out")]
  for weights, message in [(tmp_path / "none.pt", "none.pt"), (bad, "bad.npz")]:
    assert extract_features.main(base + ["--weights", str(weights)]) == 2
    error = capsys.readouterr().err
    assert error.startswith("error: ") and message in error and error.count("\n") == 1
  assert extract_features.main(base + ["--weights", str(bad), "--num-shards", "2",
                                       "--shard-index", "3"]) == 2
  assert "--shard-index 3" in capsys.readouterr().err
  assert not (tmp_path / "out").exists()  # nothing written on a bad start
