"""Narratives as LLaVA-1.5 makes them: frames padded to a square with the image mean (pixel values
against a numpy implementation of pad, Pillow's bicubic resize and normalisation), margins that
only padding keeps, the llava_v1 prompt and the settings in every line, captions counted at the
token cap, and outputs of different settings kept apart (merge and resume; older lines read)."""

import json
import logging

import numpy as np
import pytest
import torch
from PIL import Image

from data_prep.frames import sample_frames
from data_prep.narration import cli, outputs, pipeline
from data_prep.narration.narrators import LlavaNarrator, rows
from data_prep.narration.settings import PAPER_PROMPT, narration_settings
from data_prep.testing import random_mllm
from data_prep.testing.videos import write_frames_video
from tea_jax.errors import InputError

LLAVA_V1 = ("A chat between a curious human and an artificial intelligence assistant. The "
            "assistant gives helpful, detailed, and polite answers to the human's questions. USER: "
            f"<image>\n{PAPER_PROMPT} ASSISTANT:")
OLD_PROMPT = f"USER: <image>\n{PAPER_PROMPT} ASSISTANT:"  # what lines before this change record


@pytest.fixture(scope="module")
def spread_llava_dir(tmp_path_factory):
  """A tiny random LLaVA whose captions depend on the image."""
  model, processor = random_mllm.build_llava("tiny", seed=11)
  random_mllm.spread_weights(model, 0.2, 11)
  return random_mllm.save(model, processor, str(tmp_path_factory.mktemp("llava_spread")))


# --- Pillow's bicubic resize of an 8-bit image, written out in numpy --------------------------
# Separable: each output sample weighs the inputs within 2 filter widths of its centre (widened by
# the scale when shrinking) with Keys' cubic (a = -0.5), weights normalised to sum 1 and rounded to
# 22-bit fixed point; the horizontal pass runs first (for a square, as here) and is rounded to
# 8 bits before the vertical pass.
FIXED = 22


def cubic(x: np.ndarray) -> np.ndarray:
  x = np.abs(x)
  return np.where(x < 1, (1.5 * x - 2.5) * x * x + 1,
                  np.where(x < 2, ((-0.5 * x + 2.5) * x - 4) * x + 2, 0.0))


def fixed_weights(size_in: int, size_out: int) -> np.ndarray:
  """(size_out, size_in) integer weights."""
  scale = size_in / size_out
  width = max(scale, 1.0)
  matrix = np.zeros((size_out, size_in), np.int64)
  for out in range(size_out):
    centre = (out + 0.5) * scale
    lo = max(int(centre - 2 * width + 0.5), 0)
    hi = min(int(centre + 2 * width + 0.5), size_in)
    weights = cubic((np.arange(lo, hi) - centre + 0.5) / width)
    weights /= weights.sum()
    matrix[out, lo:hi] = np.trunc(weights * (1 << FIXED) + np.where(weights < 0, -0.5, 0.5))
  return matrix


def one_pass(values: np.ndarray, matrix: np.ndarray) -> np.ndarray:
  """Resamples the last axis, rounded and clipped to 8 bits."""
  return np.clip(((1 << (FIXED - 1)) + values @ matrix.T) >> FIXED, 0, 255)


def bicubic_square(image: np.ndarray, size: int) -> np.ndarray:
  """(size, size, 3) from a square (S, S, 3) uint8 image."""
  if image.shape[0] == size:
    return image
  matrix = fixed_weights(image.shape[0], size)
  across = one_pass(np.moveaxis(image.astype(np.int64), 1, -1), matrix)  # (rows S, 3, cols)
  down = one_pass(np.moveaxis(across, 0, -1), matrix)  # (3, cols, rows)
  return np.transpose(down, (2, 1, 0)).astype(np.uint8)


def llava_pixels(frame: np.ndarray, mean, std, size: int) -> np.ndarray:
  """(3, size, size): LLaVA-1.5's preprocessing of an (H, W, 3) frame, in numpy."""
  height, width = frame.shape[:2]
  side = max(height, width)
  square = np.empty((side, side, 3), np.uint8)
  square[:] = np.floor(np.asarray(mean) * 255)  # LLaVA: int(x * 255) of the processor's mean
  top, left = (side - height) // 2, (side - width) // 2
  square[top:top + height, left:left + width] = frame
  scaled = bicubic_square(square, size).astype(np.float64) / 255
  return ((scaled - np.asarray(mean)) / np.asarray(std)).transpose(2, 0, 1)


def test_the_numpy_resize_is_pillows():
  # The reference is only as good as its resize: it must give Pillow's pixels exactly.
  rng = np.random.default_rng(0)
  for side, size in [(48, 32), (45, 32), (64, 17), (20, 32), (100, 33)]:
    image = rng.integers(0, 256, (side, side, 3), dtype=np.uint8)
    pillow = np.asarray(Image.fromarray(image).resize((size, size), Image.Resampling.BICUBIC))
    assert np.array_equal(bicubic_square(image, size), pillow), (side, size)


def test_pad_pixel_values_equal_llava_preprocessing_in_numpy(llava_dir):
  narrator = LlavaNarrator(llava_dir, device="cpu", max_new_tokens=2)
  processor = narrator.processor.image_processor
  mean, std, size = processor.image_mean, processor.image_std, processor.crop_size.height
  assert narrator.pad_colour == (122, 116, 104)  # LLaVA's colour for OpenAI CLIP's mean
  rng = np.random.default_rng(1)
  # Landscape, portrait with an odd difference, one already the processor's size once padded,
  # a square.
  frames = [rng.integers(0, 256, shape, dtype=np.uint8)
            for shape in [(30, 48, 3), (48, 29, 3), (20, 32, 3), (40, 40, 3)]]
  pixels = narrator.prepare([Image.fromarray(f) for f in frames])["pixel_values"].numpy()
  for frame, got in zip(frames, pixels):
    np.testing.assert_allclose(got, llava_pixels(frame, mean, std, size), rtol=0, atol=1e-5)
  # --preprocess crop keeps the Hugging Face processor's own (short side, centre crop): the
  # landscape frame's sides are gone, so its pixels differ from LLaVA's.
  crop = LlavaNarrator(llava_dir, device="cpu", max_new_tokens=2, preprocess="crop")
  cropped = crop.prepare([Image.fromarray(frames[0])])["pixel_values"].numpy()[0]
  own = crop.processor(images=[Image.fromarray(frames[0])], text=["<image>"],
                       return_tensors="pt")["pixel_values"].numpy()[0]
  assert np.array_equal(cropped, own)
  assert np.abs(cropped - pixels[0]).max() > 0.1


def margin_videos(folder, seconds: int = 2, fps: int = 5) -> dict:
  """Two lossless 64x48 videos with the same picture but for their 4-pixel left and right margins
  (black in one, white in the other); each second shows another picture."""
  rng = np.random.default_rng(5)
  pictures = [rng.integers(0, 256, (48, 64, 3), dtype=np.uint8) for _ in range(seconds)]
  paths = {}
  for name, level in (("dark", 0), ("light", 255)):
    frames = []
    for picture in pictures:
      frame = picture.copy()
      frame[:, :4] = frame[:, -4:] = level
      frames += [frame] * fps
    paths[name] = str(folder / f"{name}.mkv")
    write_frames_video(paths[name], frames, fps)
  return paths


def test_margins_change_narratives_only_when_padded(spread_llava_dir, tmp_path):
  paths = margin_videos(tmp_path)
  dark, light = ([np.asarray(image) for _, image in sample_frames(paths[name])]
                 for name in ("dark", "light"))
  # The premise: the decoded frames differ in the margins alone.
  assert all(np.array_equal(a[:, 4:-4], b[:, 4:-4]) and not np.array_equal(a, b)
             for a, b in zip(dark, light))
  texts = {}
  for preprocess in ("pad", "crop"):
    narrator = LlavaNarrator(spread_llava_dir, device="cpu", max_new_tokens=8,
                             preprocess=preprocess)
    out = str(tmp_path / f"{preprocess}.jsonl")
    pipeline.narrate(narrator, sorted(paths.items()), out, batch_size=4, progress=False)
    lines = {r["video_id"]: r for r in map(json.loads, open(out, encoding="utf-8"))}
    texts[preprocess] = {vid: [n["text"] for n in r["narratives"]] for vid, r in lines.items()}
    assert all(r["settings"]["preprocess"] == preprocess for r in lines.values())
  assert texts["crop"]["dark"] == texts["crop"]["light"]  # the crop cuts the margins away
  assert texts["pad"]["dark"] != texts["pad"]["light"]  # LLaVA-1.5 sees them


def test_lines_record_llava_v1_prompt_and_settings(spread_llava_dir, tmp_path):
  paths = margin_videos(tmp_path, seconds=1)
  narrator = LlavaNarrator(spread_llava_dir, device="cpu", max_new_tokens=5)
  out = tmp_path / "n.jsonl"
  pipeline.narrate(narrator, sorted(paths.items()), str(out), progress=False)
  for record in map(json.loads, out.read_text("utf-8").splitlines()):
    assert record["prompt"] == LLAVA_V1 and record["model"] == "llava"
    assert record["settings"] == {"backend": "llava", "preprocess": "pad",
                                  "template": "llava_v1", "max_new_tokens": 5}


def test_settings_for_the_app_without_loading_the_model(llava_dir):
  narrator = LlavaNarrator(llava_dir, device="cpu", max_new_tokens=7, preprocess="crop")
  # The llava_v1 template needs no model directory at all: the app's cache key costs nothing.
  assert narration_settings("llava", None, preprocess="crop", max_new_tokens=7) == narrator.settings
  assert narrator.settings.key_parts() == {"backend": "llava", "prompt": LLAVA_V1,
                                           "preprocess": "crop", "template": "llava_v1",
                                           "max_new_tokens": 7}
  assert narration_settings("llava").max_new_tokens == 192
  hf = narration_settings("llava", llava_dir, template="hf")
  assert hf.prompt == OLD_PROMPT and hf.preprocess == "pad"
  vicuna = narration_settings("llava", None, template="vicuna_v1").prompt
  assert vicuna == LLAVA_V1.replace("curious human", "curious user").replace("human's", "user's")
  with pytest.raises(InputError, match="without a prompt"):
    narration_settings("blip2", None, template="hf")
  with pytest.raises(InputError, match="chat template"):
    narration_settings("hf", None, template="llava_v1")


def test_captions_at_the_cap_are_counted_and_reported(tmp_path, caplog):
  model, processor = random_mllm.build_llava("tiny", seed=12)
  random_mllm.spread_weights(model, 0.2, 12)
  narrator = LlavaNarrator(None, "cpu", max_new_tokens=5, components=(model, processor))
  paths = margin_videos(tmp_path, seconds=3)
  frames = [image for name in ("dark", "light") for _, image in sample_frames(paths[name])]
  with torch.inference_mode():  # the reference: model.generate's tokens of each frame
    inputs = narrator.prepare(frames)
    echoed = inputs["input_ids"].shape[1]
    tokens = model.generate(**inputs, do_sample=False, max_new_tokens=5)[:, echoed:]
  # An EOS id (not the pad id) that ends some captions within the budget, not all.
  expected = 0
  for eos in [int(t) for t in torch.unique(tokens) if int(t) != processor.tokenizer.pad_token_id]:
    model.generation_config.eos_token_id = eos
    with torch.inference_mode():
      ended = (model.generate(**inputs, do_sample=False, max_new_tokens=5)[:, echoed:] == eos)
    expected = int((~ended.any(-1)).sum())
    if 0 < expected < len(frames):
      break
  assert 0 < expected < len(frames)
  with caplog.at_level(logging.INFO, logger="data_prep"):
    summary = pipeline.narrate(narrator, sorted(paths.items()), str(tmp_path / "n.jsonl"),
                               batch_size=4, progress=False)
  assert summary["captions_at_cap"] == expected and summary["max_new_tokens"] == 5
  assert f"{expected} of {len(frames)} captions reached the cap of 5 new tokens" in caplog.text


def legacy_line(video_id: str, model: str = "llava", prompt=OLD_PROMPT) -> str:
  """A line as the narrator wrote it before settings were recorded."""
  return json.dumps({"video_id": video_id, "interval": 1.0, "model": model, "prompt": prompt,
                     "narratives": [{"t": 0.0, "text": f"a person in {video_id}"}]}) + "\n"


def test_older_outputs_merge_and_different_settings_do_not(llava_dir, tmp_path, capsys):
  old = [tmp_path / "old.00000-of-00002.jsonl", tmp_path / "old.00001-of-00002.jsonl"]
  old[0].write_text(legacy_line("a") + legacy_line("c"), "utf-8")
  old[1].write_text(legacy_line("b"), "utf-8")
  merged = outputs.merge([str(p) for p in old], str(tmp_path / "old.jsonl"), {"a", "b", "c"})
  assert merged["videos"] == 3
  assert (tmp_path / "old.jsonl").read_text("utf-8") == "".join(
      legacy_line(v) for v in "abc")  # lines kept as they were

  paths = margin_videos(tmp_path, seconds=1)
  new = tmp_path / "new.jsonl"
  narrator = LlavaNarrator(llava_dir, device="cpu", max_new_tokens=3)
  pipeline.narrate(narrator, sorted(paths.items()), str(new), progress=False)
  with pytest.raises(InputError) as error:
    outputs.merge([str(old[0]), str(new)], str(tmp_path / "mixed.jsonl"))
  message = str(error.value)
  assert f"{old[0]}:1" in message and f"{new}:1" in message and "\n" not in message
  assert "preprocess='crop'" in message and "preprocess='pad'" in message
  assert "max_new_tokens=80" in message and "max_new_tokens=3" in message
  assert not (tmp_path / "mixed.jsonl").exists()
  capsys.readouterr()
  code = cli.main(["merge", "--out", str(tmp_path / "mixed.jsonl"), str(old[0]), str(new)])
  err = capsys.readouterr().err
  assert code == 1 and len(err.strip().splitlines()) == 1 and "different settings" in err


def test_a_run_adds_only_to_an_output_of_its_settings(llava_dir, tmp_path, capsys):
  paths = margin_videos(tmp_path, seconds=1)
  folder = tmp_path / "videos"
  folder.mkdir()
  for name, path in paths.items():
    (folder / f"{name}.mkv").write_bytes(open(path, "rb").read())
  out = tmp_path / "n.jsonl"
  out.write_text(legacy_line("dark"), "utf-8")  # an older run narrated one video
  base = ["--videos", str(folder), "--model", llava_dir, "--out", str(out), "--device", "cpu",
          "--batch-size", "2"]
  assert cli.main(base) == 2  # today's defaults are other settings
  err = capsys.readouterr().err
  assert f"{out}:1 was narrated with other settings" in err and "Traceback" not in err
  assert len(err.strip().splitlines()) == 1 and "preprocess='crop'" in err
  # The older run's settings (its prompt is what the hf template renders) resume it.
  older = ["--preprocess", "crop", "--template", "hf", "--max-new-tokens", "80"]
  assert cli.main(base + older) == 0
  summary = json.loads(capsys.readouterr().out)
  assert summary["videos_skipped_as_done"] == 1 and summary["videos_written"] == 1
  lines = out.read_text("utf-8").splitlines(keepends=True)
  assert lines[0] == legacy_line("dark") and json.loads(lines[1])["prompt"] == OLD_PROMPT


def test_rows_split_batch_first_and_flattened_patches():
  # Qwen2-VL's layout: one image per frame, its patches flattened, counted by image_grid_thw.
  grid = torch.tensor([[1, 2, 2], [1, 2, 4], [1, 4, 4]])
  patches = torch.arange(4 + 8 + 16)[:, None].repeat(1, 3)
  inputs = {"input_ids": torch.arange(6).view(3, 2), "pixel_values": patches,
            "image_grid_thw": grid}
  part = rows(inputs, 1, 3, 3)
  assert torch.equal(part["input_ids"], inputs["input_ids"][1:])
  assert torch.equal(part["image_grid_thw"], grid[1:])
  assert torch.equal(part["pixel_values"], patches[4:])
  assert torch.equal(rows(inputs, 0, 1, 3)["pixel_values"], patches[:4])
  with pytest.raises(ValueError, match="cannot split"):
    rows({"input_ids": torch.zeros(3, 2), "pixel_values": torch.zeros(5, 3)}, 0, 1, 3)
