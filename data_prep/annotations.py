"""Readers for every annotation family TEA is evaluated on.

| family | file | record | duration |
| --- | --- | --- | --- |
| Charades-STA | charades_sta_*.txt | `vid start end##sentence` per line | charades.json duration |
| Charades-CD | charades_*.json | {vid: {timestamps, sentences, video_duration}} | video_duration |
| Charades-CG, ActivityNet* | *.json | {vid: {duration, timestamps, sentences}} | duration |
| your own | *.jsonl | {qid, query, vid, duration, relevant_windows} per line | duration |

In the JSON-lines format every window of a query is a pair (training uses each); the pairs of one
line share its query index, so that evaluation scores a prediction against the best-matching
window and counts each query once. A window with start >= end is unusable there.

Moments are clipped as EMB clips them: start = max(0, start), end = min(end, duration). Every
questionable or bad record is reported with its file and line or key. What happens to it depends on
the policy (`bad_records`):
  "reference" (default) builds exactly the pairs EMB's processors build: a moment whose start comes
      after its end, or that lies outside its video (it becomes start > end once clipped), is KEPT
      and reported; its labels are (0, 0) and its IoU with any prediction is 0, as in EMB;
  "skip" skips those too;
  "fail" raises InputError on the first reported record.
Records EMB's code could not read at all (a non-numeric or missing time, a video without a
duration, an empty sentence, a malformed line) are skipped under "reference" and "skip".
"""

import dataclasses
import json
import math
import os
from typing import Any

from tea_jax.config_checks import BAD_RECORD_POLICIES
from tea_jax.errors import ConfigError, InputError



@dataclasses.dataclass(frozen=True)
class Pair:
  """One (video, query) pair; times in seconds, clipped as EMB clips them (start = max(0, start),
  end = min(end, duration)), so start > end is possible for a kept questionable record."""

  video_id: str
  start: float
  end: float
  sentence: str
  duration: float
  source: str  # "file:line" or "file:video_id[index]"
  clipped: bool  # the original moment reached outside [0, duration]
  query_index: int = -1  # index of the pair's query in the file (its pair index but in .jsonl)
  qid: str = ""  # the query's id in a .jsonl file


@dataclasses.dataclass(frozen=True)
class BadRecord:
  """A reported record: where it is, what is wrong, and whether its pair was kept anyway."""

  source: str
  reason: str
  kept: bool = False


@dataclasses.dataclass
class Annotations:
  """The pairs of one file that will be used, in file order, and every reported record."""

  path: str
  family: str
  pairs: list[Pair]
  bad: list[BadRecord]
  file_videos: int  # distinct videos in the file, bad records included
  policy: str = "reference"

  @property
  def videos(self) -> list[str]:
    return list(dict.fromkeys(p.video_id for p in self.pairs))

  @property
  def queries(self) -> int:
    """Distinct queries among the pairs (each window of a .jsonl query is a pair)."""
    return len({p.query_index for p in self.pairs})

  def summary(self) -> dict[str, Any]:
    """Counts for inspect and meta.json; `pairs` is the number of pairs that will be used."""
    kept = sum(b.kept for b in self.bad)
    return {"file": self.path, "family": self.family, "bad_record_policy": self.policy,
            "videos": len(self.videos), "pairs": len(self.pairs), "queries": self.queries,
            "records": len(self.pairs) + len(self.bad) - kept,
            "file_videos": self.file_videos,
            "clipped_moments": sum(p.clipped for p in self.pairs),
            "bad_records": len(self.bad), "kept_bad_records": kept,
            "skipped_records": len(self.bad) - kept,
            "bad": [dataclasses.asdict(b) for b in self.bad]}


def _number(value) -> float | None:
  try:
    number = float(value)
  except (TypeError, ValueError):
    return None
  return number if math.isfinite(number) else None


def _questionable(start: float, end: float, duration: float) -> str | None:
  """Why EMB would keep this moment although it is wrong, or None when it is fine."""
  if start > end:
    return f"start {start} > end {end}"
  if start >= duration or end <= 0:
    return f"moment [{start}, {end}] lies outside the video [0, {duration}]"
  return None


def make_pair(video_id: str, start, end, sentence, duration, source: str,
              bad: list[BadRecord], keep_questionable: bool = True) -> Pair | None:
  """Validates and clips one moment; appends a BadRecord when it is unusable (returns None) or
  questionable (returns its pair when `keep_questionable`, as EMB does, else None)."""
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
  problem = _questionable(start_s, end_s, duration)
  if problem:
    bad.append(BadRecord(source, problem, kept=keep_questionable))
    if not keep_questionable:
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
    raise InputError(f"{path}: not valid UTF-8 JSON ({e})") from None


def read_durations(path: str) -> dict[str, float]:
  """charades.json-style {vid: {"duration": seconds, ...}} -> {vid: seconds}."""
  data = _load_json(path)
  if not isinstance(data, dict):
    raise InputError(f"{path}: expected a JSON object of videos")
  out = {}
  for vid, record in data.items():
    value = _number(record.get("duration")) if isinstance(record, dict) else _number(record)
    if value is not None:
      out[str(vid)] = value
  return out


def read_charades_sta(path: str, durations: dict[str, float],
                      keep_questionable: bool = True) -> Annotations:
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
      pair = make_pair(vid, start, end, sentence, durations.get(vid), source, bad,
                       keep_questionable)
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


def read_json_annotations(path: str, durations: dict[str, float] | None = None,
                          keep_questionable: bool = True) -> Annotations:
  """{vid: {timestamps: [[s, e], ...], sentences: [...], duration | video_duration}}."""
  data = _load_json(path)
  if not isinstance(data, dict):
    raise InputError(f"{path}: expected a JSON object {{video_id: record}}")
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
      # EMB zips the two lists: the pairs of the shorter one are used, nothing else is lost.
      bad.append(BadRecord(f"{name}:{vid}", f"{len(timestamps)} timestamps but "
                                            f"{len(sentences)} sentences: the first "
                                            f"{min(len(timestamps), len(sentences))} are used",
                           kept=True))
    for index, (stamp, sentence) in enumerate(zip(timestamps, sentences)):
      source = f"{name}:{vid}[{index}]"
      if not isinstance(stamp, (list, tuple)) or len(stamp) != 2:
        bad.append(BadRecord(source, f"timestamp {stamp!r} is not [start, end]"))
        continue
      pair = make_pair(vid, stamp[0], stamp[1], sentence, duration, source, bad,
                       keep_questionable)
      if pair:
        pairs.append(pair)
  return Annotations(path, family, pairs, bad, len(data))


MOMENT_KEYS = ("qid", "query", "vid", "duration", "relevant_windows")


def _window(stamp) -> str | None:
  """Why a .jsonl window is unusable (it is reported), or None; one that reaches outside its
  video is questionable instead (make_pair clips it, as for every family)."""
  if not isinstance(stamp, (list, tuple)) or len(stamp) != 2:
    return f"window {stamp!r} is not [start, end]"
  start, end = _number(stamp[0]), _number(stamp[1])
  if start is None or end is None:
    return f"window {stamp!r} has a non-numeric time"
  if start >= end:
    return f"window [{start}, {end}]: start >= end"
  return None


def read_moment_jsonl(path: str, keep_questionable: bool = True) -> Annotations:
  """Moment-DETR / QVHighlights / Lighthouse JSON lines: {"qid", "query", "vid", "duration",
  "relevant_windows": [[start, end], ...]} per line, other keys ignored."""
  if not os.path.isfile(path):
    raise FileNotFoundError(f"annotation file not found: {path}")
  pairs, bad, videos, queries = [], [], set(), 0
  name = os.path.basename(path)
  with open(path, encoding="utf-8", errors="replace") as f:
    for number, line in enumerate(f, start=1):
      source = f"{name}:{number}"
      if not line.strip():
        continue
      try:
        record = json.loads(line)
      except json.JSONDecodeError as e:
        bad.append(BadRecord(source, f"not a JSON object ({e.msg})"))
        continue
      if not isinstance(record, dict):
        bad.append(BadRecord(source, "not a JSON object"))
        continue
      missing = [key for key in MOMENT_KEYS if key not in record]
      if missing:
        bad.append(BadRecord(source, f"missing key(s) {', '.join(missing)}"))
        continue
      vid, windows = str(record["vid"]), record["relevant_windows"]
      videos.add(vid)
      if not isinstance(windows, list) or not windows:
        bad.append(BadRecord(source, "relevant_windows is not a non-empty list of [start, end]"))
        continue
      line_pairs = []
      for index, stamp in enumerate(windows):
        where = f"{source}[{index}]"
        problem = _window(stamp)
        if problem:
          bad.append(BadRecord(where, problem))
          continue
        pair = make_pair(vid, stamp[0], stamp[1], record["query"], _number(record["duration"]),
                         where, bad, keep_questionable)
        if pair:
          line_pairs.append(dataclasses.replace(pair, query_index=queries,
                                                qid=str(record["qid"])))
      if line_pairs:
        pairs += line_pairs
        queries += 1
  return Annotations(path, "moment_jsonl", pairs, bad, len(videos))


def read_annotations(path: str, durations: str | dict[str, float] | None = None,
                     strict: bool = False, bad_records: str = "reference") -> Annotations:
  """Reads any supported annotation file. `durations`: charades.json (path or dict), needed for
  Charades-STA txt files. `bad_records`: "reference", "skip" or "fail" (module docstring);
  strict=True is "fail": any reported record raises InputError naming it."""
  if bad_records not in BAD_RECORD_POLICIES:
    raise ConfigError(f"unknown bad_records policy {bad_records!r}: expected one of "
                     f"{', '.join(BAD_RECORD_POLICIES)}")
  policy = "fail" if strict else bad_records
  keep = policy == "reference"
  if isinstance(durations, str):
    durations = read_durations(durations)
  if path.endswith(".txt"):
    if durations is None:
      raise InputError(f"{path}: Charades-STA txt files need --durations charades.json")
    annotations = read_charades_sta(path, durations, keep)
  elif path.endswith(".jsonl"):
    annotations = read_moment_jsonl(path, keep)
  else:
    annotations = read_json_annotations(path, durations, keep)
  if annotations.family != "moment_jsonl":  # one query per pair
    annotations.pairs = [dataclasses.replace(p, query_index=i)
                         for i, p in enumerate(annotations.pairs)]
  annotations.policy = policy
  if policy == "fail" and annotations.bad:
    first = annotations.bad[0]
    raise InputError(f"{len(annotations.bad)} bad records in {path}; first: {first.source}: "
                        f"{first.reason}")
  return annotations
