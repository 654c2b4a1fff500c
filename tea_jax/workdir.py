"""One run per workdir: an exclusive lock held for the whole run.

The lock is `fcntl.flock` on `<workdir>/.lock`, which the kernel releases when the process ends,
however it ends: a run killed with SIGKILL leaves the file behind but not the lock, and the next
run takes it over (and says that the previous one did not finish cleanly). The file records who
holds it, so a refused run can say which process is using the workdir.
"""

import contextlib
import fcntl
import json
import logging
import os
import socket
import time

from tea_jax.errors import CheckpointError

log = logging.getLogger("tea_jax")
LOCK_FILE = ".lock"


@contextlib.contextmanager
def locked(workdir: str, what: str = "run"):
  """Holds the workdir's lock for the duration of the block; refuses at once if it is held."""
  os.makedirs(workdir, exist_ok=True)
  path = os.path.join(workdir, LOCK_FILE)
  fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
  try:
    try:
      fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
      raise CheckpointError(f"workdir {workdir} is in use by another run ({_holder(fd)}); wait "
                            f"for it to finish or choose another --workdir") from None
    previous = _holder(fd)
    if previous != "unknown":
      log.warning("workdir %s: taking over the lock of a run that ended without releasing it "
                  "(%s)", workdir, previous)
    _write(fd, {"pid": os.getpid(), "host": socket.gethostname(), "what": what,
                "since": time.strftime("%Y-%m-%d %H:%M:%S")})
    yield
    os.ftruncate(fd, 0)  # a clean end leaves an empty file: nothing to take over
  finally:
    os.close(fd)  # releases the flock


def _holder(fd: int) -> str:
  os.lseek(fd, 0, os.SEEK_SET)
  raw = os.read(fd, 4096)
  try:
    info = json.loads(raw)
    return f"{info['what']} of pid {info['pid']} on {info['host']} since {info['since']}"
  except (ValueError, KeyError, TypeError):
    return "unknown"


def _write(fd: int, info: dict) -> None:
  os.ftruncate(fd, 0)
  os.lseek(fd, 0, os.SEEK_SET)
  os.write(fd, json.dumps(info).encode())
  os.fsync(fd)
