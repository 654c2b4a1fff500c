"""Readers for every annotation family TEA is evaluated on.

| family | file | record | duration |
| --- | --- | --- | --- |
| Charades-STA | charades_sta_{train,test}.txt | `vid start end##sentence` per line | charades.json[vid]["duration"] |
| Charades-CD | charades_{train,val,test_iid,test_ood}.json | {vid: {timestamps, sentences, video_duration}} | video_duration |
| Charades-CG, ActivityNet-Captions/-CD/-CG | *.json | {vid: {duration, timestamps, sentences}} | duration |

Moments are clipped to [0, duration] (EMB). A bad record (start > end, a non-numeric or missing time,
an empty sentence, a video without a duration, a moment starting after its video ends) is reported
with its file and line or key, then skipped, or raises BadAnnotation with `strict=True`.
"""

import dataclasses
import json
import math
import os
from typing import Any


class BadAnnotation(ValueError):
  """A bad record in strict mode, or an unreadable annotation file."""


@dataclasses.dataclass(frozen=True)
class Pair:
  """One (video, query) pair; times in seconds, clipped to [0, duration]."""

  video_id: str
  start: float
  end: float
  sentence: str
  duration: float
  source: str  # "file:line" or "file:video_id[index]"
  clipped: bool  # the original moment reached outside [0, duration]


@dataclasses.dataclass(frozen=True)
class BadRecord:
  source: str
  reason: str


@dataclasses.dataclass
class Annotations:
  """The valid pairs of one file, in file order, and the bad records that were skipped."""

  path: str
  family: str
  pairs: list[Pair]
  bad: list[BadRecord]
  file_videos: int  # distinct videos in the file, bad records included

  @property
  def videos(self) -> list[str]:
    return list(dict.fromkeys(p.video_id for p in self.pairs))

  def summary(self) -> dict[str, Any]:
    return {"file": self.path, "family": self.family, "videos": len(self.videos),
            "pairs": len(self.pairs), "records": len(self.pairs) + len(self.bad),
            "file_videos": self.file_videos,
            "clipped_moments": sum(p.clipped for p in self.pairs),
            "bad_records": len(self.bad),
            "bad": [dataclasses.asdict(b) for b in self.bad]}


def _number(value) -> float | None:
  try:
    number = float(value)
  except (TypeError, ValueError):
    return None
  return number if math.isfinite(number) else None


def make_pair(video_id: str, start, end, sentence, duration, source: str,
              bad: list[BadRecord]) -> Pair | None:
  """Validates and clips one moment; appends a BadRecord and returns None when it is bad."""
  start_s, end_s = _number(start), _number(end)
  if start_s is None or end_s is None:
    bad.append(BadRecord(source, f"non-numeric or missing time: start={start!r} end={end!r}"))
    return None
  if duration is None or duration <= 0:
    bad.append(BadRecord(source, f"unknown video {video_id!r}: no positive duration"))
    return None
  if not isinstance(sentence, str) or not sentence.strip():
    bad.append(BadRecord(source, "empty sentence"))
    return None
  if start_s > end_s:
    bad.append(BadRecord(source, f"start {start_s} > end {end_s}"))
    return None
  if start_s >= duration or end_s <= 0:
    bad.append(BadRecord(source, f"moment [{start_s}, {end_s}] lies outside the video "
                                 f"[0, {duration}]"))
    return None
  clipped_start, clipped_end = max(0.0, start_s), min(end_s, duration)
  return Pair(video_id, clipped_start, clipped_end, sentence, duration, source,
              clipped=(clipped_start != start_s or clipped_end != end_s))


def _load_json(path: str) -> Any:
  if not os.path.isfile(path):
    raise FileNotFoundError(f"annotation file not found: {path}")
  try:
    with open(path, encoding="utf-8") as f:
      return json.load(f)
  except (json.JSONDecodeError, UnicodeDecodeError) as e:
    raise BadAnnotation(f"{path}: not valid UTF-8 JSON ({e})") from None


def read_durations(path: str) -> dict[str, float]:
  """charades.json-style {vid: {"duration": seconds, ...}} -> {vid: seconds}."""
  data = _load_json(path)
  if not isinstance(data, dict):
    raise BadAnnotation(f"{path}: expected a JSON object of videos")
  out = {}
  for vid, record in data.items():
    value = _number(record.get("duration")) if isinstance(record, dict) else _number(record)
    if value is not None:
      out[str(vid)] = value
  return out


def read_charades_sta(path: str, durations: dict[str, float]) -> Annotations:
  """`vid start end##sentence` lines; durations from charades.json."""
  if not os.path.isfile(path):
    raise FileNotFoundError(f"annotation file not found: {path}")
  pairs, bad, seen = [], [], set()
  name = os.path.basename(path)
  with open(path, encoding="utf-8", errors="replace") as f:
    for number, line in enumerate(f, start=1):
      if "\ufffd" in line:
        bad.append(BadRecord(f"{name}:{number}", "line is not valid UTF-8"))
        continue
      line = line.strip()
      if not line:
        continue
      source = f"{name}:{number}"
      head, sep, sentence = line.partition("##")
      fields = head.split()
      if not sep or len(fields) != 3:
        bad.append(BadRecord(source, "expected 'vid start end##sentence'"))
        continue
      vid, start, end = fields
      seen.add(vid)
      pair = make_pair(vid, start, end, sentence, durations.get(vid), source, bad)
      if pair:
        pairs.append(pair)
  return Annotations(path, "charades_sta", pairs, bad, len(seen))


def _json_family(records: dict[str, Any]) -> tuple[str, str]:
  """(family, duration field) from the first record's keys."""
  first = next(iter(records.values()), {})
  if isinstance(first, dict) and "video_duration" in first:
    return "charades_cd", "video_duration"
  if isinstance(first, dict) and "news" in first:
    return "novel_word", "duration"
  if isinstance(first, dict) and "novels" in first:
    return "novel_composition", "duration"
  return "json", "duration"


def read_json_annotations(path: str, durations: dict[str, float] | None = None) -> Annotations:
  """{vid: {timestamps: [[s, e], ...], sentences: [...], duration | video_duration}}."""
  data = _load_json(path)
  if not isinstance(data, dict):
    raise BadAnnotation(f"{path}: expected a JSON object {{video_id: record}}")
  family, field = _json_family(data)
  pairs, bad = [], []
  name = os.path.basename(path)
  for vid, record in data.items():
    if not isinstance(record, dict):
      bad.append(BadRecord(f"{name}:{vid}", "record is not an object"))
      continue
    duration = _number(record.get(field))
    if duration is None and durations is not None:
      duration = durations.get(vid)
    timestamps = record.get("timestamps")
    sentences = record.get("sentences")
    if not isinstance(timestamps, list) or not isinstance(sentences, list):
      bad.append(BadRecord(f"{name}:{vid}", "missing 'timestamps' or 'sentences' list"))
      continue
    if len(timestamps) != len(sentences):
      bad.append(BadRecord(f"{name}:{vid}", f"{len(timestamps)} timestamps but "
                                            f"{len(sentences)} sentences"))
    for index, (stamp, sentence) in enumerate(zip(timestamps, sentences)):
      source = f"{name}:{vid}[{index}]"
      if not isinstance(stamp, (list, tuple)) or len(stamp) != 2:
        bad.append(BadRecord(source, f"timestamp {stamp!r} is not [start, end]"))
        continue
      pair = make_pair(vid, stamp[0], stamp[1], sentence, duration, source, bad)
      if pair:
        pairs.append(pair)
  return Annotations(path, family, pairs, bad, len(data))


def read_annotations(path: str, durations: str | dict[str, float] | None = None,
                     strict: bool = False) -> Annotations:
  """Reads any supported annotation file. `durations`: charades.json (path or dict), needed for
  Charades-STA txt files. With strict=True any bad record raises BadAnnotation naming it."""
  if isinstance(durations, str):
    durations = read_durations(durations)
  if path.endswith(".txt"):
    if durations is None:
      raise BadAnnotation(f"{path}: Charades-STA txt files need --durations charades.json")
    annotations = read_charades_sta(path, durations)
  else:
    annotations = read_json_annotations(path, durations)
  if strict and annotations.bad:
    first = annotations.bad[0]
    raise BadAnnotation(f"{len(annotations.bad)} bad records in {path}; first: {first.source}: "
                        f"{first.reason}")
  return annotations
