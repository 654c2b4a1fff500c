"""Atomic file writes: a temporary file in the same folder, fsync'ed, then renamed over the target,
so a crash leaves either the old file or the new one, never half of one."""

import json
import os
import tempfile
from typing import Any, Callable, IO


def atomic_write(path: str, write: Callable[[IO], None], binary: bool = False) -> None:
  """Calls write(file) on a temporary file next to `path`, then renames it to `path`."""
  folder = os.path.dirname(os.path.abspath(path))
  os.makedirs(folder, exist_ok=True)
  fd, tmp = tempfile.mkstemp(dir=folder, prefix=".tmp-")
  try:
    with os.fdopen(fd, "wb" if binary else "w", **({} if binary else {"encoding": "utf-8"})) as f:
      write(f)
      f.flush()
      os.fsync(f.fileno())
    os.replace(tmp, path)
  except BaseException:
    if os.path.exists(tmp):
      os.unlink(tmp)
    raise


def write_json(path: str, obj: Any) -> None:
  """Writes `obj` as indented JSON, atomically."""
  atomic_write(path, lambda f: json.dump(obj, f, indent=1, sort_keys=True))


def write_lines(path: str, records) -> None:
  """Writes one JSON object per line, atomically."""
  atomic_write(path, lambda f: f.writelines(json.dumps(r) + "\n" for r in records))
