"""All devices of a machine in one command (two CPU workers stand in for GPUs): the same lines as
captioning each video's frames directly, failures merged, parts removed, resume from the parts an
interrupted run left behind."""

import json
import os

import pytest
import torch

from data_prep.frames import sample_frames
from data_prep.narration import cli, devices, pipeline
from data_prep.narration.narrators import LlavaNarrator
from data_prep.testing import random_mllm
from data_prep.testing.videos import write_test_video
from tea_jax.errors import InputError


@pytest.fixture(scope="module")
def llava_dir(tmp_path_factory):
  model, processor = random_mllm.build_llava("tiny", seed=3)
  random_mllm.spread_weights(model, 0.2, 3)  # captions that differ from frame to frame
  return random_mllm.save(model, processor, str(tmp_path_factory.mktemp("llava")))


@pytest.fixture
def videos(tmp_path):
  folder = tmp_path / "videos"
  folder.mkdir()
  for k, seconds in enumerate([3, 2, 4, 2, 3]):
    write_test_video(str(folder / f"v{k}.mp4"), seconds)
  (folder / "broken.mp4").write_bytes(b"\x00\x01 not a video" * 50)
  return folder


def test_a_worker_sees_only_its_gpu(monkeypatch):
  monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
  assert devices._see_only("cuda:2") == "cuda:0"  # pylint: disable=protected-access
  assert os.environ["CUDA_VISIBLE_DEVICES"] == "2"
  monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "4,6,7")  # numbers relative to what was visible
  assert devices._see_only("cuda:1") == "cuda:0"  # pylint: disable=protected-access
  assert os.environ["CUDA_VISIBLE_DEVICES"] == "6"
  assert devices._see_only("cpu") == "cpu"  # pylint: disable=protected-access


def test_parse_devices(caplog, monkeypatch):
  assert devices.parse_devices("0,2") == ["cuda:0", "cuda:2"]
  # "all" on a machine without a GPU (as this one): the CPU, said in a line.
  monkeypatch.setattr(torch.cuda, "device_count", lambda: 0)
  with caplog.at_level("WARNING", logger="data_prep"):
    assert devices.parse_devices("all") == ["cpu"]
  assert "no CUDA device is visible, narrating on the CPU" in caplog.text
  monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
  assert devices.parse_devices("all") == ["cuda:0", "cuda:1"]
  assert devices.parse_devices("cpu,cpu") == ["cpu", "cpu"]
  with pytest.raises(InputError, match="names no device"):
    devices.parse_devices(",")


def test_all_devices_in_one_command_resumes_and_merges(llava_dir, videos, tmp_path, capsys):
  out = tmp_path / "n.jsonl"
  narrator = LlavaNarrator(llava_dir, device="cpu", max_new_tokens=5)
  # An interrupted three-device run left v0 and v3 in its parts: they are not narrated again.
  selected = dict(pipeline.select_videos(str(videos)))
  for k, vid in [(0, "v0"), (2, "v3")]:
    pipeline.narrate(narrator, [(vid, selected[vid])], devices.part_path(str(out), k, 3),
                     progress=False)
  kept = [open(devices.part_path(str(out), k, 3), encoding="utf-8").read() for k in (0, 2)]
  command = ["--videos", str(videos), "--model", llava_dir, "--out", str(out), "--devices",
             "cpu,cpu", "--max-new-tokens", "5", "--batch-size", "3"]
  # The broken video's recorded failure stops the merge unless allowed; the parts stay.
  assert cli.main(command) == 2
  err = capsys.readouterr().err
  assert "1 videos failed" in err and "--allow-failures" in err and "Traceback" not in err
  parts = [devices.part_path(str(out), k, 2) for k in range(2)]
  assert all(os.path.exists(p) for p in parts) and not out.exists()

  # Again with failures allowed: only the failed video is tried again, every part is merged
  # (the three-device run's too) and removed.
  assert cli.main(command + ["--allow-failures"]) == 0
  summary = json.loads(capsys.readouterr().out)
  assert summary["videos"] == 5 and summary["videos_failed"] == 1
  assert summary["videos_skipped_as_done"] == 5 and summary["frames"] == 0
  assert not list(tmp_path.glob("n.part*"))
  lines = out.read_text("utf-8").splitlines(keepends=True)
  assert kept[0] in lines and kept[1] in lines
  records = [json.loads(line) for line in lines]
  assert [r["video_id"] for r in records] == [f"v{k}" for k in range(5)]
  failures = [json.loads(line) for line in open(f"{out}.failures.jsonl", encoding="utf-8")]
  assert [f["video_id"] for f in failures] == ["broken"]
  # Each caption is the one the narrator gives that frame on its own.
  for record in records:
    frames = [image for _, image in sample_frames(str(videos / f"{record['video_id']}.mp4"))]
    assert [n["text"] for n in record["narratives"]] == narrator.caption(frames)
  assert len({n["text"] for r in records for n in r["narratives"]}) > 1
