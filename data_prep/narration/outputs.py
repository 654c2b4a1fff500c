"""The narrate command's files: the JSON-lines output (checked and repaired on resume), the failures
file (one line per video that failed, kept current), and the merge of shard outputs.

Output line: {"video_id", "interval", "narratives": [{"t", "text"}], "model", "prompt", "settings":
{"backend", "preprocess", "template", "max_new_tokens"}} (lines written before "settings" existed
are read as the processor's crop with the 80-token cap: settings.line_settings).
Failures line: {"video_id", "reason"}; the failures of `out` live in `out + ".failures.jsonl"`.
"""

import json
import logging
import os

from data_prep.narration.settings import describe_difference, line_settings
from tea_jax.errors import InputError
from tea_jax.files import atomic_write
from tea_jax.errors import InputError

log = logging.getLogger(__name__)

# How many bad lines a warning or an error message lists before it only counts the rest.
_LISTED = 10


def failures_path(out: str) -> str:
  """The failures file of output `out`."""
  return out + ".failures.jsonl"


def parse_line(line: bytes) -> tuple[str | None, str | None, dict | None]:
  """(video id, None, record) for a well-formed narration line, else (None, what is wrong, None)."""
  try:
    record = json.loads(line)
  except (json.JSONDecodeError, UnicodeDecodeError) as e:
    return None, f"not JSON ({e.msg if hasattr(e, 'msg') else e})", None
  if not isinstance(record, dict) or not isinstance(record.get("video_id"), str):
    return None, "no video_id", None
  narratives = record.get("narratives")
  if not isinstance(narratives, list) or not all(
      isinstance(n, dict) and isinstance(n.get("t"), (int, float))
      and isinstance(n.get("text"), str) for n in narratives):
    return None, "narratives is not a list of {t, text}", None
  return record["video_id"], None, record


class SettingsSeen:
  """The distinct settings (settings.line_settings) of the lines read so far, each with the first
  place it was seen (file:line)."""

  def __init__(self):
    self.first: dict[str, tuple[dict, str]] = {}

  def add(self, record: dict, where: str) -> None:
    """Notes the settings of `record`, read at `where`."""
    settings = line_settings(record)
    key = json.dumps(settings, sort_keys=True)
    if key not in self.first:
      self.first[key] = (settings, where)

  def check_one(self, action: str) -> None:
    """InputError in one line when lines of more than one setting were seen."""
    if len(self.first) > 1:
      (a, at_a), (b, at_b) = list(self.first.values())[:2]
      side_a, side_b = describe_difference(a, b)
      raise InputError(f"cannot {action}: lines narrated with different settings, {at_a} "
                       f"({side_a}) and {at_b} ({side_b}); narrate them again with one setting")

  def check_against(self, settings: dict, out: str) -> None:
    """InputError in one line when a line seen was narrated with other settings than `settings`
    (those of the run that would add lines to `out`)."""
    for seen, where in self.first.values():
      if seen != settings:
        old, new = describe_difference(seen, settings)
        raise InputError(f"{where} was narrated with other settings ({old}) than this run ({new}); "
                         f"a run adds to {out} only with the same settings: pass them, or write "
                         f"to another --out")


def _listing(problems: list[str]) -> str:
  """The first problems, then how many more."""
  more = f" (and {len(problems) - _LISTED} more)" if len(problems) > _LISTED else ""
  return "; ".join(problems[:_LISTED]) + more


def finished_videos(path: str, seen: SettingsSeen | None = None) -> set[str]:
  """Videos already narrated in `path` (their settings noted in `seen`). Lines that are cut short
  (a crash mid-write), corrupt, malformed or a repeat of an earlier video are reported (file:line)
  and dropped, the file rewritten atomically without them, so that their videos are narrated
  again."""
  if not os.path.exists(path):
    return set()
  with open(path, "rb") as f:
    lines = f.read().split(b"\n")
  kept, done, problems = [], set(), []
  for number, line in enumerate(lines, start=1):
    if not line.strip():
      continue
    vid, problem, record = parse_line(line)
    if problem is None and number == len(lines):
      problem = "cut short (no end of line)"
    elif vid in done:
      problem = f"a second line for video {vid}"
    if problem is not None:
      problems.append(f"{path}:{number}: {problem}")
      continue
    if seen is not None:
      seen.add(record, f"{path}:{number}")
    done.add(vid)
    kept.append(line + b"\n")
  if problems:
    log.warning("dropped %d bad lines, their videos will be narrated again: %s", len(problems),
                _listing(problems))
    atomic_write(path, lambda f: f.writelines(kept), binary=True)
  return done


def read_failures(path: str) -> dict[str, str]:
  """{video_id: reason} of a failures file; unreadable lines are reported and skipped."""
  failed: dict[str, str] = {}
  if not os.path.exists(path):
    return failed
  with open(path, encoding="utf-8", errors="replace") as f:
    for number, line in enumerate(f, start=1):
      if not line.strip():
        continue
      try:
        record = json.loads(line)
        failed[str(record["video_id"])] = str(record["reason"])
      except (json.JSONDecodeError, KeyError, TypeError):
        log.warning("%s:%d: not a failure line (skipped)", path, number)
  return failed


class FailureLog:
  """The failures file kept current: one line per video whose last attempt failed, rewritten
  atomically when a video fails or a failed video succeeds (failures are rare)."""

  def __init__(self, path: str):
    self.path = path
    self.failed = read_failures(path)

  def record(self, video_id: str, reason: str) -> None:
    """Records (or replaces) the failure of `video_id`."""
    self.failed[video_id] = reason
    self._save()

  def clear(self, video_ids) -> None:
    """Forgets the failures of videos that now have a narration."""
    gone = [vid for vid in video_ids if vid in self.failed]
    for vid in gone:
      del self.failed[vid]
    if gone:
      self._save()

  def replace(self, failed: dict[str, str]) -> None:
    """Makes `failed` the whole content (a merge's failures)."""
    self.failed = dict(failed)
    self._save()

  def _save(self) -> None:
    """Rewrites the file atomically, sorted by video id."""
    lines = [json.dumps({"video_id": vid, "reason": reason}, ensure_ascii=False) + "\n"
             for vid, reason in sorted(self.failed.items())]
    if lines or os.path.exists(self.path):
      atomic_write(self.path, lambda f: f.writelines(lines))


class LineWriter:
  """Appends JSON lines durably: write, flush, fsync."""

  def __init__(self, path: str):
    try:
      os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
      self.f = open(path, "a", encoding="utf-8")  # pylint: disable=consider-using-with
    except OSError as e:
      raise InputError(f"cannot write the output {path}: {e}") from e

  def write(self, record: dict) -> None:
    """Appends `record` as one line, on disk when this returns."""
    self.f.write(json.dumps(record, ensure_ascii=False) + "\n")
    self.f.flush()
    os.fsync(self.f.fileno())

  def close(self) -> None:
    self.f.close()


def _read_shard(shard: str, records: dict, origin: dict, duplicates: list,
                seen: SettingsSeen) -> None:
  """Adds a shard's lines to `records` {video_id: line}, their settings to `seen`; a malformed line
  is an error."""
  if not os.path.isfile(shard):
    raise InputError(f"shard output not found: {shard}")
  with open(shard, "rb") as f:
    for number, line in enumerate(f, start=1):
      if not line.strip():
        continue
      vid, problem, record = parse_line(line)
      if problem is not None:
        raise InputError(f"{shard}:{number}: not a narration line ({problem}); run the shard's "
                       f"narrate command again to repair it")
      seen.add(record, f"{shard}:{number}")
      if vid in records:
        duplicates.append(f"{vid} ({origin[vid]} and {shard}:{number})")
      text = line.decode("utf-8")
      records[vid], origin[vid] = text if text.endswith("\n") else text + "\n", f"{shard}:{number}"


def merge(shards: list[str], out: str, expected: set[str] | None = None,
          allow_failures: bool = False) -> dict:
  """Joins shard outputs (sorted by video id) into `out` atomically, and their failures files into
  `out`'s. Duplicated videos are an error; so are videos of `expected` without a narration,
  reported apart: those a shard recorded as failed (an error unless `allow_failures`) and those
  missing without a trace (always an error). Shards narrated with different settings (backend,
  prompt, preprocessing, token cap, interval) are refused."""
  records, origin, duplicates, seen = {}, {}, [], SettingsSeen()
  for shard in shards:
    _read_shard(shard, records, origin, duplicates, seen)
  seen.check_one("merge the shards")
  if duplicates:
    raise InputError(f"{len(duplicates)} videos appear in more than one line: {duplicates[:5]}")
  failed = {}
  for shard in shards:
    failed.update(read_failures(failures_path(shard)))
  failed = {vid: reason for vid, reason in failed.items() if vid not in records}
  unaccounted = sorted(expected - set(records) - set(failed)) if expected is not None else []
  problems = []
  if unaccounted:
    problems.append(f"{len(unaccounted)} videos have no narration and no recorded failure in the "
                    f"shards, e.g. {unaccounted[:10]}")
  if failed and not allow_failures:
    listed = [f"{vid}: {reason}" for vid, reason in sorted(failed.items())]
    problems.append(f"{len(failed)} videos failed (recorded in the shards' failures files): "
                    f"{_listing(listed)}; pass --allow-failures to merge without them")
  if problems:
    raise InputError("; ".join(problems))
  atomic_write(out, lambda f: f.writelines(records[vid] for vid in sorted(records)))
  FailureLog(failures_path(out)).replace(failed)
  return {"out": out, "videos": len(records), "failed": len(failed), "shards": len(shards)}
