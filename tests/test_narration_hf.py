"""The generic backend (--backend hf) on a tiny random model of a second family, Idefics3 (SmolVLM's
architecture), built from its config and saved as a local directory: the narrate command end to
end, the paper's question through the model's chat template, the static-cache decoder where its
adapter was checked and model.generate (one warning) where not, the same captions either way."""

import json
import logging

import pytest

from data_prep.frames import sample_frames
from data_prep.narration import cli, generation
from data_prep.narration.narrators import HfNarrator
from data_prep.narration.settings import PAPER_PROMPT, narration_settings
from data_prep.testing import random_mllm
from data_prep.testing.videos import write_test_video
from tea_jax.errors import InputError

# The tiny model's chat template has Idefics3's format, written out here.
IDEFICS3_PROMPT = f"User:<image>{PAPER_PROMPT}<end_of_utterance>\nAssistant:"


@pytest.fixture(scope="module")
def idefics_dir(tmp_path_factory):
  model, processor = random_mllm.build_idefics3(seed=4)
  random_mllm.spread_weights(model, 0.2, 4)  # captions that differ from frame to frame
  return random_mllm.save(model, processor, str(tmp_path_factory.mktemp("idefics3")))


@pytest.fixture
def videos(tmp_path):
  folder = tmp_path / "videos"
  folder.mkdir()
  write_test_video(str(folder / "v1.mp4"), 3, size=(64, 48))
  write_test_video(str(folder / "v2.mp4"), 2, size=(48, 64))
  return folder


def frames_of(path):
  return [image for _, image in sample_frames(str(path))]


def test_a_second_family_narrates_a_video_end_to_end(idefics_dir, videos, tmp_path, capsys):
  out = tmp_path / "n.jsonl"
  code = cli.main(["--videos", str(videos), "--model", idefics_dir, "--out", str(out),
                   "--backend", "hf", "--device", "cpu", "--max-new-tokens", "6",
                   "--batch-size", "3"])
  assert code == 0, capsys.readouterr().err
  summary = json.loads(capsys.readouterr().out)
  assert summary["videos_written"] == 2 and summary["frames"] == 5
  records = {r["video_id"]: r for r in map(json.loads, out.read_text("utf-8").splitlines())}
  assert [len(records[v]["narratives"]) for v in ("v1", "v2")] == [3, 2]
  for record in records.values():
    assert record["model"] == "hf" and record["prompt"] == IDEFICS3_PROMPT
    assert record["settings"] == {"backend": "hf", "preprocess": "crop", "template": "hf",
                                  "max_new_tokens": 6}
  # Each caption is the one model.generate gives that frame on its own.
  reference = HfNarrator(idefics_dir, "cpu", max_new_tokens=6, fast=False)
  for vid, record in records.items():
    expected = [reference.caption([frame])[0] for frame in frames_of(videos / f"{vid}.mp4")]
    assert [n["text"] for n in record["narratives"]] == expected
  assert len({n["text"] for r in records.values() for n in r["narratives"]}) > 1


def test_the_static_cache_decoder_serves_checked_families(idefics_dir, videos):
  fast = HfNarrator(idefics_dir, "cpu", max_new_tokens=8)
  assert fast.decoder is not None  # idefics3 is a family the default adapter was checked on
  frames = frames_of(videos / "v1.mp4") + frames_of(videos / "v2.mp4")
  slow = HfNarrator(idefics_dir, "cpu", max_new_tokens=8, fast=False)
  assert fast.caption(frames) == slow.caption(frames)
  assert fast.settings == narration_settings("hf", idefics_dir, max_new_tokens=8)
  padded = HfNarrator(idefics_dir, "cpu", max_new_tokens=8, preprocess="pad")
  assert padded.pad_colour == (127, 127, 127)  # the processor's mean, 0.5
  assert len(padded.caption(frames)) == len(frames)


def test_other_families_decode_with_generate_after_one_warning(idefics_dir, videos, monkeypatch,
                                                                caplog):
  frames = frames_of(videos / "v1.mp4")
  expected = HfNarrator(idefics_dir, "cpu", max_new_tokens=8).caption(frames)
  monkeypatch.setattr(generation, "DEFAULT_ADAPTER_FAMILIES", ("llava", "smolvlm"))
  with caplog.at_level(logging.WARNING, logger="data_prep"):
    narrator = HfNarrator(idefics_dir, "cpu", max_new_tokens=8)
    assert narrator.decoder is None
    assert narrator.caption(frames) == expected and narrator.caption(frames[:1]) == expected[:1]
  warnings = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
  assert len(warnings) == 1 and "decoding with model.generate" in warnings[0]
  assert "idefics3" in warnings[0]


def test_a_model_without_chat_template_or_image_text_head_is_one_line(tmp_path, videos, capsys):
  model, processor = random_mllm.build_blip2()  # its processor has no chat template
  blip = random_mllm.save(model, processor, str(tmp_path / "blip2"))
  with pytest.raises(InputError, match="has no chat template"):
    narration_settings("hf", blip)
  code = cli.main(["--videos", str(videos), "--model", blip, "--out", str(tmp_path / "o.jsonl"),
                   "--backend", "hf", "--device", "cpu"])
  err = capsys.readouterr().err
  assert code == 2 and "has no chat template" in err and "Traceback" not in err
  assert len([line for line in err.splitlines() if line.startswith("error:")]) == 1
  code = cli.main(["--videos", str(videos), "--model", blip, "--out", str(tmp_path / "o.jsonl"),
                   "--backend", "hf", "--template", "llava_v1"])
  assert code == 2 and "--template hf" in capsys.readouterr().err
