"""Narration's ordering and batching (data_prep/narration/pipeline.py) with captions that differ
for every frame: each caption lands on its own frame's time, whatever the batch size, however
the decoding threads interleave videos, and when frames of several videos share a batch.

The tiny random LLaVA's weights are spread (std 0.2) and every frame is a different random
texture, so that its greedy captions depend strongly on the image; the test checks that they are
all distinct before relying on them. The expected caption of a frame is the same narrator's
caption of that frame alone, so the test holds whatever prompt or preprocessing the narrator uses.
"""

import json

import av
import numpy as np
import pytest

from data_prep.frames import sample_frames
from data_prep.narration import pipeline
from data_prep.narration.narrators import LlavaNarrator
from data_prep.testing import random_mllm

# Seconds of each video: sampled at 1 s, they give 17 frames in all.
SECONDS = {"a": 5, "b": 7, "c": 4, "d": 1}
FPS = 2


def write_textured_video(path, video: int, seconds: int, size=(64, 48)) -> None:
  """Every frame a different random texture of 8x8 blocks (survives lossy coding)."""
  width, height = size
  with av.open(path, "w") as container:
    stream = container.add_stream("mpeg4", rate=FPS)
    stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
    for i in range(seconds * FPS):
      blocks = np.random.default_rng(1000 * video + i).integers(
          0, 256, (height // 8, width // 8, 3))
      image = np.kron(blocks, np.ones((8, 8, 1))).astype(np.uint8)
      for packet in stream.encode(av.VideoFrame.from_ndarray(image, format="rgb24")):
        container.mux(packet)
    for packet in stream.encode():
      container.mux(packet)


@pytest.fixture(scope="module")
def narrator(tmp_path_factory):
  model, processor = random_mllm.build_llava("tiny", seed=0)
  random_mllm.spread_weights(model, 0.2, seed=0)
  path = random_mllm.save(model, processor, str(tmp_path_factory.mktemp("llava_spread")))
  return LlavaNarrator(path, device="cpu", max_new_tokens=12)


@pytest.fixture(scope="module")
def videos(tmp_path_factory):
  folder = tmp_path_factory.mktemp("videos")
  for number, (vid, seconds) in enumerate(SECONDS.items()):
    write_textured_video(str(folder / f"{vid}.mp4"), number, seconds)
  return folder


@pytest.fixture(scope="module")
def expected(narrator, videos):
  """{video: [(t, caption of that frame captioned alone)]}."""
  truth = {}
  for vid in SECONDS:
    frames = list(sample_frames(str(videos / f"{vid}.mp4"), 1.0))
    truth[vid] = [(t, narrator.caption([image])[0]) for t, image in frames]
    assert [t for t, _ in truth[vid]] == [float(s) for s in range(SECONDS[vid])]
  captions = [text for items in truth.values() for _, text in items]
  assert len(set(captions)) == len(captions) == sum(SECONDS.values()), captions
  assert all(captions)
  return truth


@pytest.mark.parametrize("decode_workers", [1, 3])
@pytest.mark.parametrize("batch_size", [1, 3, 7])
def test_each_caption_lands_on_its_own_frames_time(narrator, videos, expected, tmp_path,
                                                   batch_size, decode_workers):
  out = tmp_path / "narratives.jsonl"
  summary = pipeline.narrate(narrator, pipeline.select_videos(str(videos)), str(out),
                             batch_size=batch_size, progress=False,
                             decode_workers=decode_workers)
  assert summary["videos_written"] == len(SECONDS) and summary["videos_failed"] == 0
  assert summary["frames"] == sum(SECONDS.values())
  lines = [json.loads(line) for line in out.read_text(encoding="utf-8").splitlines()]
  assert sorted(line["video_id"] for line in lines) == sorted(SECONDS)
  for line in lines:
    got = [(n["t"], n["text"]) for n in line["narratives"]]
    assert got == expected[line["video_id"]], line["video_id"]
