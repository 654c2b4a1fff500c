"""Narration without downloaded weights: tiny random LLaVA / BLIP-2 models saved to disk and loaded
through the real from_pretrained path, generated videos of known length, crashes and shards."""

import json
import os

import pytest
import torch

from data_prep.narration import cli, outputs, pipeline as narrate
from data_prep.testing import random_mllm
from data_prep.frames import UnreadableVideo, find_videos, sample_frames
from data_prep.testing.videos import write_test_video
from data_prep.narration.narrators import PAPER_PROMPT, Blip2Narrator, LlavaNarrator
from tea_jax.errors import InputError


@pytest.fixture(scope="module")
def narrator(llava_dir):
  return LlavaNarrator(llava_dir, device="cpu", max_new_tokens=6)


@pytest.fixture
def videos(tmp_path):
  folder = tmp_path / "videos"
  folder.mkdir()
  write_test_video(str(folder / "v1.mp4"), 5)
  write_test_video(str(folder / "v2.mkv"), 3)
  write_test_video(str(folder / "v3.webm"), 2, codec="libvpx")
  (folder / "broken.mp4").write_bytes(b"\x00\x01 not a video" * 50)
  (folder / "empty.mp4").write_bytes(b"")
  return folder


def test_frames_every_second_with_true_timestamps(videos):
  frames = list(sample_frames(str(videos / "v1.mp4"), 1.0))
  assert [t for t, _ in frames] == [0.0, 1.0, 2.0, 3.0, 4.0]
  # The test video's brightness encodes the second: frames are the right ones, in order.
  levels = [image.getpixel((0, 0))[0] for _, image in frames]
  assert levels == sorted(levels) and levels[0] < 10 and levels[-1] > 245
  assert [t for t, _ in sample_frames(str(videos / "v1.mp4"), 2.0)] == [0.0, 2.0, 4.0]
  assert [t for t, _ in sample_frames(str(videos / "v3.webm"), 1.0)] == [0.0, 1.0]
  with pytest.raises(UnreadableVideo, match="broken.mp4"):
    list(sample_frames(str(videos / "broken.mp4")))
  assert set(find_videos(str(videos))) == {"v1", "v2", "v3", "broken", "empty"}


# LLaVA-1.5's llava_v1 conversation, written out here from LLaVA's conversation.py (system sentence,
# " ", "USER: " + "<image>\n" + question, " ", "ASSISTANT:").
LLAVA_V1 = ("A chat between a curious human and an artificial intelligence assistant. The "
            "assistant gives helpful, detailed, and polite answers to the human's questions. USER: "
            f"<image>\n{PAPER_PROMPT} ASSISTANT:")


def test_llava_prompt_is_llava_1_5s_conversation(narrator, llava_dir):
  assert narrator.prompt_text() == LLAVA_V1
  assert narrator.settings.template == "llava_v1" and narrator.settings.preprocess == "pad"
  assert str(narrator.device) == "cpu" and str(narrator.dtype) == "torch.float32"
  # --template hf: the processor's chat template (the tiny model's has llava-hf's format).
  hf = LlavaNarrator(llava_dir, device="cpu", max_new_tokens=2, template="hf", preprocess="crop")
  assert hf.prompt_text() == f"USER: <image>\n{PAPER_PROMPT} ASSISTANT:"


def test_batched_captions_equal_one_at_a_time(narrator, videos):
  images = [image for _, image in sample_frames(str(videos / "v1.mp4"))]
  batched = narrator.caption(images)
  single = [narrator.caption([image])[0] for image in images]
  assert batched == single
  assert all(text == " ".join(text.split()) and "ASSISTANT" not in text for text in batched)


def test_out_of_memory_halves_the_batch_and_keeps_the_smaller_size(narrator, videos, monkeypatch,
                                                                   caplog):
  images = [image for _, image in sample_frames(str(videos / "v1.mp4"))]
  expected = [narrator.caption([image])[0] for image in images]
  real, sizes = narrator._generate, []

  def small_device(inputs):  # a device that holds at most 2 frames
    sizes.append(len(inputs["pixel_values"]))
    if sizes[-1] > 2:
      raise torch.OutOfMemoryError("CUDA out of memory (simulated)")
    return real(inputs)

  monkeypatch.setattr(narrator, "_generate", small_device)
  monkeypatch.setattr(narrator, "max_batch", None)
  assert narrator.caption(images) == expected
  assert sizes == [5, 2, 2, 1] and narrator.max_batch == 2
  assert "continuing with batches of 2 frames" in caplog.text
  sizes.clear()
  assert narrator.caption(images[:4]) == expected[:4]
  assert sizes == [2, 2]  # the smaller size is kept: no second failure

  def no_device(inputs):
    raise torch.OutOfMemoryError("CUDA out of memory (simulated)")

  monkeypatch.setattr(narrator, "_generate", no_device)
  with pytest.raises(torch.OutOfMemoryError):
    narrator.caption(images[:1])


def test_narrate_writes_lines_reports_failures_and_resumes(narrator, videos, tmp_path):
  out = str(tmp_path / "narratives.jsonl")
  selected = narrate.select_videos(str(videos))
  summary = narrate.narrate(narrator, selected, out, batch_size=4, progress=False,
                            decode_workers=3)
  assert summary["videos_written"] == 3 and summary["videos_failed"] == 2
  lines = [json.loads(line) for line in open(out, encoding="utf-8")]
  by_id = {line["video_id"]: line for line in lines}
  assert [n["t"] for n in by_id["v1"]["narratives"]] == [0.0, 1.0, 2.0, 3.0, 4.0]
  assert len(by_id["v2"]["narratives"]) == 3 and by_id["v1"]["model"] == "llava"
  # Three decoders interleave the videos' frames, batches of 4 mix them and are prepared one batch
  # ahead of generation: every caption must still land on its own frame.
  for vid in ("v1", "v2", "v3"):
    path = next(p for v, p in selected if v == vid)
    expected = narrator.caption([image for _, image in sample_frames(path)])
    assert [n["text"] for n in by_id[vid]["narratives"]] == expected
  failures = [json.loads(line) for line in open(out + ".failures.jsonl", encoding="utf-8")]
  assert {f["video_id"] for f in failures} == {"broken", "empty"}
  assert all(f["reason"] for f in failures)

  # A crash mid-write leaves a partial line; the restart drops it and redoes only that video.
  with open(out, encoding="utf-8") as f:
    kept = f.readlines()[:1]
  with open(out, "w", encoding="utf-8") as f:
    f.writelines(kept)
    f.write('{"video_id": "v2", "interval": 1.0, "narr')
  again = narrate.narrate(narrator, selected, out, batch_size=4, progress=False)
  assert again["videos_skipped_as_done"] == 1 and again["videos_written"] == 2
  lines = [json.loads(line) for line in open(out, encoding="utf-8")]
  assert sorted(line["video_id"] for line in lines) == ["v1", "v2", "v3"]
  assert lines[0] == json.loads(kept[0])  # the finished video's line is kept as it was


def test_shards_cover_every_video_once_and_merge_checks(narrator, videos, tmp_path):
  out = str(tmp_path / "n.jsonl")
  paths = []
  for index in range(2):
    selected = narrate.select_videos(str(videos), num_shards=2, shard_index=index)
    paths.append(narrate.shard_path(out, 2, index))
    narrate.narrate(narrator, selected, paths[-1], batch_size=3, progress=False)
  shards = [narrate.select_videos(str(videos), num_shards=2, shard_index=i) for i in range(2)]
  ids = [vid for shard in shards for vid, _ in shard]
  assert sorted(ids) == sorted(set(ids)) == ["broken", "empty", "v1", "v2", "v3"]
  good = {"v1", "v2", "v3"}
  every = good | {"broken", "empty"}
  # The two undecodable videos are recorded as failed by their shards: reported apart from
  # missing videos, and an error unless failures are allowed.
  with pytest.raises(InputError, match=r"2 videos failed .*broken: .*broken.mp4.*--allow-failures"):
    outputs.merge(paths, out, expected=every)
  assert not os.path.exists(out)
  merged = outputs.merge(paths, out, expected=every, allow_failures=True)
  assert merged["videos"] == 3 and merged["failed"] == 2
  assert [json.loads(l)["video_id"] for l in open(out, encoding="utf-8")] == ["v1", "v2", "v3"]
  carried = [json.loads(l) for l in open(out + ".failures.jsonl", encoding="utf-8")]
  assert [f["video_id"] for f in carried] == ["broken", "empty"] and all(f["reason"]
                                                                         for f in carried)
  with pytest.raises(InputError, match=r"1 videos have no narration and no recorded failure.*v9"):
    outputs.merge(paths, out, expected=every | {"v9"}, allow_failures=True)
  with pytest.raises(InputError, match="more than one line"):
    outputs.merge(paths + paths[:1], out)


def test_merge_command_accounts_for_recorded_failures(narrator, videos, tmp_path, capsys):
  out = str(tmp_path / "n.jsonl")
  paths = [narrate.shard_path(out, 2, index) for index in range(2)]
  for index, path in enumerate(paths):
    narrate.narrate(narrator, narrate.select_videos(str(videos), num_shards=2, shard_index=index),
                    path, batch_size=4, progress=False)
  code = cli.main(["merge", "--out", out, *paths, "--videos", str(videos)])
  err = capsys.readouterr().err
  assert code == 1 and "2 videos failed" in err and "no recorded failure" not in err
  assert len(err.strip().splitlines()) == 1 and "Traceback" not in err
  code = cli.main(["merge", "--out", out, *paths, "--videos", str(videos), "--allow-failures"])
  summary = json.loads(capsys.readouterr().out)
  assert code == 0 and summary["videos"] == 3 and summary["failed"] == 2


def test_blip2_backend_through_the_same_interface(tmp_path, videos):
  model, processor = random_mllm.build_blip2()
  path = random_mllm.save(model, processor, str(tmp_path / "blip2"))
  blip = Blip2Narrator(path, device="cpu", max_new_tokens=5)
  assert blip.prompt_text() is None
  out = str(tmp_path / "blip.jsonl")
  summary = narrate.narrate(blip, narrate.select_videos(str(videos), ), out, batch_size=8,
                            progress=False)
  assert summary["videos_written"] == 3
  assert json.loads(open(out, encoding="utf-8").readline())["model"] == "blip2"


def test_cli_errors_are_clear(tmp_path, videos, capsys):
  code = cli.main(["--videos", str(videos), "--model", str(tmp_path / "nope"), "--out",
                       str(tmp_path / "o.jsonl"), "--device", "cpu"])
  assert code == 2 and "local Hugging Face model directory" in capsys.readouterr().err
  code = cli.main(["--videos", str(tmp_path / "missing"), "--model", "x", "--out", "o"])
  assert code == 2 and "video folder not found" in capsys.readouterr().err
  code = cli.main(["--videos", str(videos), "--model", "x", "--out", "o",
                       "--decode-workers", "0"])
  assert code == 2 and "--decode-workers must be at least 1" in capsys.readouterr().err


def llava_parameters(text, vision, vocab):
  """LLaVA-1.5 = Llama (untied head) + CLIP ViT tower + 2-layer MLP projector, counted by hand."""
  h, inter, layers = text["hidden_size"], text["intermediate_size"], text["num_hidden_layers"]
  llama = 2 * vocab * h + layers * (4 * h * h + 3 * h * inter + 2 * h) + h
  v, vi, vl = vision["hidden_size"], vision["intermediate_size"], vision["num_hidden_layers"]
  patches = (vision["image_size"] // vision["patch_size"]) ** 2
  clip = (3 * vision["patch_size"] ** 2 * v + v + (patches + 1) * v + 2 * v  # embeddings, pre-LN
          + vl * (4 * (v * v + v) + 2 * v * vi + vi + v + 4 * v) + 2 * v)  # layers, post-LN
  projector = v * h + h + h * h + h
  return llama + clip + projector


@pytest.mark.parametrize("architecture", ["llava-1.5-7b", "llava-1.5-13b"])
def test_benchmark_architectures_have_the_released_sizes(architecture):
  # Built on the meta device: shapes only, no memory. The benchmark's frames/s are those of the
  # real model only if every matrix has the released model's size.
  with torch.device("meta"):
    model, _ = random_mllm.build_llava(architecture, vocab_size=32064)
  sizes = random_mllm.ARCHITECTURES[architecture]
  count = sum(p.numel() for p in model.parameters())
  assert count == llava_parameters(sizes["text"], sizes["vision"], 32064)
  # 7.06B and 13.35B: the sizes the llava-hf releases of LLaVA-1.5 report.
  assert count == {"llava-1.5-7b": 7_063_427_072, "llava-1.5-13b": 13_351_494_656}[architecture]
