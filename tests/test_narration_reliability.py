"""Narration reliability: the failures file (one current line per failed video), outputs with bad
lines anywhere (reported, dropped, redone), one-line errors for bad input while unexpected errors
keep their traceback, and the narration package's functions kept short."""

import ast
import json
import logging
import pathlib

import pytest

from data_prep.narration import cli, narrators, pipeline
from data_prep.narration.narrators import LlavaNarrator
from data_prep.testing.videos import write_test_video


@pytest.fixture(scope="module")
def narrator(llava_dir):
  return LlavaNarrator(llava_dir, device="cpu", max_new_tokens=4)


@pytest.fixture
def videos(tmp_path):
  folder = tmp_path / "videos"
  folder.mkdir()
  write_test_video(str(folder / "v1.mp4"), 3)
  write_test_video(str(folder / "v2.mp4"), 2)
  write_test_video(str(folder / "v3.mp4"), 2)
  (folder / "broken.mp4").write_bytes(b"\x00\x01 not a video" * 50)
  (folder / "empty.mp4").write_bytes(b"")
  return folder


def read_lines(path) -> list[dict]:
  with open(path, encoding="utf-8") as f:
    return [json.loads(line) for line in f]


def test_failures_file_holds_one_current_line_per_failed_video(narrator, videos, tmp_path):
  out = str(tmp_path / "n.jsonl")
  selected = pipeline.select_videos(str(videos))
  pipeline.narrate(narrator, selected, out, batch_size=4, progress=False)
  pipeline.narrate(narrator, selected, out, batch_size=4, progress=False)  # retries both, again
  failures = read_lines(out + ".failures.jsonl")
  assert sorted(f["video_id"] for f in failures) == ["broken", "empty"]
  # The broken video is fixed: the next run narrates it and its failure line goes.
  write_test_video(str(videos / "broken.mp4"), 2)
  summary = pipeline.narrate(narrator, selected, out, batch_size=4, progress=False)
  assert summary["videos_written"] == 1 and summary["videos_failed"] == 1
  assert [f["video_id"] for f in read_lines(out + ".failures.jsonl")] == ["empty"]
  assert sorted(r["video_id"] for r in read_lines(out)) == ["broken", "v1", "v2", "v3"]


def test_bad_lines_anywhere_are_reported_dropped_and_redone(narrator, videos, tmp_path, caplog):
  out = tmp_path / "n.jsonl"
  selected = [(v, p) for v, p in pipeline.select_videos(str(videos)) if v.startswith("v")]
  pipeline.narrate(narrator, selected, str(out), batch_size=4, progress=False)
  by_id = {json.loads(line)["video_id"]: line for line in out.read_text("utf-8").splitlines()}
  damaged = [by_id["v1"],
             '{"video_id": "v2", "interval": 1.0, "narr',  # cut short, but not the last line
             '{"video_id": "v3", "narratives": "none"}',  # JSON, not a narration record
             "\udcff garbage",  # not even UTF-8 once written with surrogateescape
             by_id["v1"]]  # a second line for a finished video
  out.write_bytes("\n".join(damaged).encode("utf-8", "surrogateescape") + b"\n")
  with caplog.at_level(logging.WARNING, logger="data_prep"):
    summary = pipeline.narrate(narrator, selected, str(out), batch_size=4, progress=False)
  for number in (2, 3, 4, 5):
    assert f"{out}:{number}:" in caplog.text
  assert f"{out}:1:" not in caplog.text
  assert summary["videos_skipped_as_done"] == 1 and summary["videos_written"] == 2
  lines = out.read_text("utf-8").splitlines()
  assert lines[0] == by_id["v1"]  # the good line is kept as it was
  assert sorted(json.loads(line)["video_id"] for line in lines) == ["v1", "v2", "v3"]
  assert {json.loads(line)["video_id"]: line for line in lines}["v2"] == by_id["v2"]


def test_bad_input_is_one_line(videos, llava_dir, tmp_path, capsys):
  base = ["--videos", str(videos), "--model", llava_dir, "--device", "cpu"]
  cases = [(["--out", str(tmp_path / "o.jsonl"), "--batch-size", "0"], "--batch-size must be"),
           (["--out", str(tmp_path / "o.jsonl"), "--batch-size", "many"], "number or auto"),
           (["--out", str(tmp_path / "o.jsonl"), "--interval", "0"], "--interval must be positive"),
           (["--out", str(tmp_path)], "cannot write the output"),
           (["--out", str(tmp_path / "o.jsonl"), "--video-ids", str(tmp_path / "none.txt")],
            "cannot read the video id list"),
           (["--out", str(tmp_path / "o.jsonl"), "--num-shards", "2", "--shard-index", "2"],
            "--shard-index 2 must be in")]
  for flags, message in cases:
    code = cli.main(base + flags)
    err = capsys.readouterr().err
    assert code == 2 and message in err, (flags, err)
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err, err


def test_unexpected_errors_keep_their_traceback(videos, tmp_path, monkeypatch):
  class CrashingNarrator:
    def __init__(self, *args, **kwargs):
      raise RuntimeError("CUDA error: an illegal memory access was encountered")

  monkeypatch.setitem(narrators.BACKENDS, "llava", CrashingNarrator)
  with pytest.raises(RuntimeError, match="illegal memory access"):
    cli.main(["--videos", str(videos), "--model", "m", "--out", str(tmp_path / "o.jsonl")])


def test_an_error_while_narrating_propagates(narrator, videos, tmp_path, monkeypatch):
  def broken_generate(inputs):
    raise ValueError("a bug in generation")

  monkeypatch.setattr(narrator, "generate", broken_generate)
  with pytest.raises(ValueError, match="a bug in generation"):
    pipeline.narrate(narrator, pipeline.select_videos(str(videos)), str(tmp_path / "o.jsonl"),
                     batch_size=2, progress=False)


def test_batch_size_auto_uses_the_narrators_choice(narrator, videos, tmp_path):
  summary = pipeline.narrate(narrator, pipeline.select_videos(str(videos)),
                             str(tmp_path / "o.jsonl"), batch_size=None, progress=False)
  assert summary["batch_size"] == 8 and summary["videos_written"] == 3  # a CPU's default


def test_no_function_of_the_narration_package_is_long():
  folder = pathlib.Path(pipeline.__file__).parent
  long = []
  for path in sorted(folder.glob("*.py")):
    for node in ast.walk(ast.parse(path.read_text("utf-8"))):
      if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
        length = node.end_lineno - node.lineno + 1
        if length > 60:
          long.append(f"{path.name}:{node.lineno} {node.name} ({length} lines)")
  assert not long, long
