"""Annotation readers: the real files' counts (SOURCES.md) and every kind of bad record."""

import json
import subprocess
import sys

import pytest
from conftest import REPO, shared_path

from data_prep.annotations import read_annotations
from tea_jax.errors import InputError

# (file, videos in the file, records in the file, bad records, clipped moments or None).
REAL = [
    ("charades_sta/charades_sta_train.txt", 5338, 12408, 0, None),
    ("charades_sta/charades_sta_test.txt", 1334, 3720, 0, None),
    ("charades_sta/original_2dtan/charades_sta_train.txt", 5338, 12408, 4, None),
    ("charades_cd/charades_train.json", 4564, 11071, 0, 1652),
    ("charades_cd/charades_val.json", 333, 859, 0, None),
    ("charades_cd/charades_test_iid.json", 333, 823, 0, None),
    ("charades_cd/charades_test_ood.json", 1442, 3375, 3, None),
    ("charades_cg/train.json", 3555, 8281, 0, 1255),
    ("charades_cg/novel_word.json", 580, 695, 0, None),
    ("charades_cg/novel_composition.json", 2480, 3442, 0, None),
    ("charades_cg/test_trivial.json", 1689, 3096, 0, None),
    ("activitynet_captions/train.json", 10009, 37421, 2, None),
    ("activitynet_captions/val_1.json", 4917, 17505, 0, None),
    ("activitynet_captions/val_2.json", 4885, 17031, 0, None),
    ("activitynet_cd/anet_train_reconstructed.json", 10984, 51415, 0, None),
    ("activitynet_cd/anet_val.json", 746, 3521, 0, None),
    ("activitynet_cd/anet_test_iid.json", 746, 3443, 0, None),
    ("activitynet_cd/anet_test_ood.json", 2450, 13578, 2, None),
    ("activitynet_cg/train.json", 9659, 36724, 2, None),
    ("activitynet_cg/novel_word.json", 1991, 3920, 0, None),
    ("activitynet_cg/novel_composition.json", 4202, 12028, 0, None),
    ("activitynet_cg/test_trivial.json", 4775, 15712, 0, None),
]


def real_path(name):
  return shared_path("data", "annotations", name)


def charades_durations():
  return str(real_path("charades_sta/charades.json"))


@pytest.mark.parametrize("name,videos,records,bad,clipped", REAL, ids=[r[0] for r in REAL])
def test_real_annotation_counts(name, videos, records, bad, clipped):
  path = real_path(name)
  durations = charades_durations() if name.endswith(".txt") else None
  ann = read_annotations(str(path), durations)
  summary = ann.summary()
  assert summary["file_videos"] == videos
  assert summary["records"] == records
  # The reference policy uses every record of the benchmark files, the reported ones included.
  assert summary["pairs"] == records and summary["bad_records"] == bad, ann.bad
  assert summary["kept_bad_records"] == bad and summary["skipped_records"] == 0
  if clipped is not None:
    assert summary["clipped_moments"] == clipped
  assert all(0 <= p.start and p.end <= p.duration for p in ann.pairs)
  skipped = read_annotations(str(path), durations, bad_records="skip")
  assert len(skipped.pairs) == records - bad
  assert all(0 <= p.start <= p.end <= p.duration for p in skipped.pairs)


def emb_pairs(path: str, durations: dict | None) -> list[tuple]:
  """EMB's processors (util/data_gen.py), transcribed: every record, start = max(0, s), end =
  min(e, duration), nothing else checked: (video, start, end, sentence) in file order."""
  out = []
  if path.endswith(".txt"):
    for line in open(path, encoding="utf-8"):
      line = line.strip()
      if line:
        head, sentence = line.split("##")
        vid, start, end = head.split(" ")
        duration = float(durations[vid]["duration"])
        out.append((vid, max(0.0, float(start)), min(float(end), duration), sentence))
    return out
  for vid, item in json.load(open(path, encoding="utf-8")).items():
    duration = float(item["video_duration"] if "video_duration" in item else item["duration"])
    for (start, end), sentence in zip(item["timestamps"], item["sentences"]):
      out.append((vid, max(0.0, float(start)), min(float(end), duration), sentence))
  return out


@pytest.mark.parametrize("name", [r[0] for r in REAL])
def test_reference_policy_builds_the_pairs_emb_builds(name):
  path = str(real_path(name))
  durations = None
  if name.endswith(".txt"):
    durations = json.load(open(charades_durations(), encoding="utf-8"))
  ann = read_annotations(path, durations and {k: v["duration"] for k, v in durations.items()})
  assert [(p.video_id, p.start, p.end, p.sentence) for p in ann.pairs] == emb_pairs(path,
                                                                                   durations)


def test_published_pair_counts_and_the_kept_records():
  ood = read_annotations(str(real_path("charades_cd/charades_test_ood.json")))
  assert len(ood.pairs) == 3375
  assert [b.source for b in ood.bad] == ["charades_test_ood.json:LEOL6[0]",
                                         "charades_test_ood.json:AKKWU[0]",
                                         "charades_test_ood.json:AKKWU[1]"]
  assert all(b.kept for b in ood.bad)
  anet = read_annotations(str(real_path("activitynet_captions/train.json")))
  assert len(anet.pairs) == 37421
  assert [b.source for b in anet.bad] == ["train.json:v_0bosp4-pyTM[3]",
                                          "train.json:v_rhOtqArO-3Y[5]"]
  inverted = [p for p in anet.pairs if p.source == "train.json:v_rhOtqArO-3Y[5]"]
  assert [(p.start, p.end) for p in inverted] == [(173.44, 150.31)]
  assert len(read_annotations(str(real_path("charades_cd/charades_test_ood.json")),
                              bad_records="skip").pairs) == 3372


def test_original_charades_train_bad_lines_are_the_four_swapped_moments():
  path = shared_path("data", "annotations", "charades_sta", "original_2dtan",
                     "charades_sta_train.txt")
  durations = str(shared_path("data", "annotations", "charades_sta", "charades.json"))
  bad = read_annotations(str(path), durations).bad
  assert [b.source.split(":")[1] for b in bad] == ["8252", "8440", "9623", "9624"]
  assert all("start" in b.reason and "> end" in b.reason for b in bad)


@pytest.fixture
def bad_files(tmp_path):
  durations = tmp_path / "charades.json"
  durations.write_text(json.dumps({"A": {"duration": 30.0}, "B": {"duration": 10.0}}))
  txt = tmp_path / "sta.txt"
  txt.write_text("\n".join([
      "A 1.0 5.0##person opens the door.",      # 1 good
      "A 8.0 2.0##start after end.",            # 2 start > end
      "A x 2.0##non numeric.",                  # 3 non-numeric time
      "A 1.0 2.0##   ",                         # 4 empty sentence
      "Z 1.0 2.0##unknown video.",              # 5 no duration
      "B 12.0 15.0##outside the video.",        # 6 starts after the end
      "B 2.0 14.0##clipped at the end.",        # 7 good, clipped to 10
      "no separator here",                      # 8 malformed
  ]) + "\n")
  js = tmp_path / "anet.json"
  js.write_text(json.dumps({
      "v1": {"duration": 20.0, "timestamps": [[0, 5], [3, None], [4, 2]],
             "sentences": [" A man runs.", "missing end", "swapped"]},
      "v2": {"timestamps": [[0, 1]], "sentences": ["no duration"]},
      "v3": {"duration": 9.0, "timestamps": [[1, 2], [2, 3]], "sentences": ["only one"]},
  }))
  return durations, txt, js


def test_every_bad_record_is_reported_with_file_and_line(bad_files):
  durations, txt, _ = bad_files
  ann = read_annotations(str(txt), str(durations))
  # Reference policy: the start > end moment and the one past the video's end are kept, clipped as
  # EMB clips them (end = min(end, duration)).
  assert [p.source for p in ann.pairs] == ["sta.txt:1", "sta.txt:2", "sta.txt:6", "sta.txt:7"]
  assert [(p.start, p.end) for p in ann.pairs[1:3]] == [(8.0, 2.0), (12.0, 10.0)]
  assert ann.pairs[3].end == 10.0 and ann.pairs[3].clipped
  reasons = {b.source: b.reason for b in ann.bad}
  assert set(reasons) == {f"sta.txt:{n}" for n in (2, 3, 4, 5, 6, 8)}
  assert {b.source for b in ann.bad if b.kept} == {"sta.txt:2", "sta.txt:6"}
  assert "start 8.0 > end 2.0" in reasons["sta.txt:2"]
  assert "non-numeric" in reasons["sta.txt:3"]
  assert "empty sentence" in reasons["sta.txt:4"]
  assert "unknown video 'Z'" in reasons["sta.txt:5"]
  assert "outside the video" in reasons["sta.txt:6"]
  skipped = read_annotations(str(txt), str(durations), bad_records="skip")
  assert [p.source for p in skipped.pairs] == ["sta.txt:1", "sta.txt:7"]
  assert {b.source for b in skipped.bad} == set(reasons) and not any(b.kept for b in skipped.bad)
  with pytest.raises(InputError, match="sta.txt:2"):
    read_annotations(str(txt), str(durations), strict=True)
  with pytest.raises(InputError, match="sta.txt:2"):
    read_annotations(str(txt), str(durations), bad_records="fail")
  with pytest.raises(ValueError, match="unknown bad_records policy"):
    read_annotations(str(txt), str(durations), bad_records="keep")


def test_json_bad_records_name_the_video_key(bad_files):
  _, _, js = bad_files
  ann = read_annotations(str(js))
  assert [p.source for p in ann.pairs] == ["anet.json:v1[0]", "anet.json:v1[2]", "anet.json:v3[0]"]
  sources = {b.source for b in ann.bad}
  assert {"anet.json:v1[1]", "anet.json:v1[2]", "anet.json:v2[0]", "anet.json:v3"} == sources
  assert [p.source for p in read_annotations(str(js), bad_records="skip").pairs] == [
      "anet.json:v1[0]", "anet.json:v3[0]"]


def test_charades_txt_without_durations_is_a_clear_error(bad_files):
  _, txt, _ = bad_files
  with pytest.raises(InputError, match="--durations"):
    read_annotations(str(txt))


def run_inspect(*args):
  return subprocess.run([sys.executable, "-m", "data_prep.inspect", *args], cwd=REPO,
                        capture_output=True, text=True, check=False)


def test_inspect_cli_summary_and_strict(bad_files):
  durations, txt, _ = bad_files
  proc = run_inspect(str(txt), "--durations", str(durations))
  assert proc.returncode == 0, proc.stderr
  summary = json.loads(proc.stdout)
  assert summary["pairs"] == 4 and summary["videos"] == 2 and summary["clipped_moments"] == 2
  assert summary["kept_bad_records"] == 2 and summary["skipped_records"] == 4
  assert "4 pairs will be used" in proc.stderr
  assert len(summary["bad"]) == 6 and summary["bad"][0]["source"] == "sta.txt:2"
  skip = run_inspect(str(txt), "--durations", str(durations), "--bad-records", "skip")
  assert json.loads(skip.stdout)["pairs"] == 2 and skip.returncode == 0
  assert run_inspect(str(txt), "--durations", str(durations), "--strict").returncode == 1
  fail = run_inspect(str(txt), "--durations", str(durations), "--bad-records", "fail")
  assert fail.returncode == 1 and len(json.loads(fail.stdout)["bad"]) == 6
  missing = run_inspect(str(txt) + ".nope")
  assert missing.returncode == 2 and "not found" in json.loads(missing.stdout)["error"]
  assert "Traceback" not in missing.stderr


def test_undecodable_files_are_reported_not_tracebacks(tmp_path, bad_files):
  durations, _, _ = bad_files
  txt = tmp_path / "latin1.txt"
  txt.write_bytes(b"A 1.0 2.0##caf\xe9 scene\nA 2.0 3.0##fine line\n")
  ann = read_annotations(str(txt), str(durations))
  assert len(ann.pairs) == 1 and ann.bad[0].source == "latin1.txt:1"
  js = tmp_path / "bad.json"
  js.write_bytes(b'{"v": \xff}')
  with pytest.raises(InputError, match="bad.json"):
    read_annotations(str(js))
  proc = run_inspect(str(js))
  assert proc.returncode == 2 and "Traceback" not in proc.stderr
