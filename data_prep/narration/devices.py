"""All devices of a machine in one command: one worker process per device, each narrating its share
of the videos into its own part file, one progress bar over all of them, and the parts merged into
the output at the end with the merge's coverage checks. Several machines keep using --num-shards
and `merge` (each machine may itself use all its devices).

Resumable like a single-device run: videos already in the output or in part files left by an
interrupted run (whatever its device count) are skipped, and every part is merged at the end.
"""

import glob
import logging
import multiprocessing
import os
import queue
import time
import traceback

from tqdm import tqdm

from data_prep.narration.outputs import SettingsSeen, failures_path, finished_videos, merge
from data_prep.narration.pipeline import expected_frames, narrate, run_settings
from data_prep.narration.settings import narrator_settings
from tea_jax.errors import InputError

log = logging.getLogger(__name__)


def parse_devices(spec: str) -> list[str]:
  """'all' -> every CUDA device, or the CPU where there is none; '0,2' -> cuda:0, cuda:2; explicit
  names ('cpu,cpu') as given."""
  import torch  # pylint: disable=import-outside-toplevel
  if spec == "all":
    count = torch.cuda.device_count()
    if count == 0:
      log.warning("--devices all: no CUDA device is visible, narrating on the CPU (slow for "
                  "LLaVA-1.5-13b: minutes per video)")
      return ["cpu"]
    return [f"cuda:{k}" for k in range(count)]
  devices = [d.strip() for d in spec.split(",") if d.strip()]
  devices = [f"cuda:{d}" if d.isdigit() else d for d in devices]
  if not devices:
    raise InputError(f"--devices {spec!r} names no device")
  return devices


def part_path(out: str, index: int, count: int) -> str:
  """The part file of worker `index` of `count`."""
  stem, ext = os.path.splitext(out)
  return f"{stem}.part{index:03d}-of-{count:03d}{ext or '.jsonl'}"


def _leftover_parts(out: str) -> list[str]:
  """Part files of any device count left beside `out` by an earlier run."""
  stem, ext = os.path.splitext(out)
  return sorted(glob.glob(f"{glob.escape(stem)}.part[0-9][0-9][0-9]-of-[0-9][0-9][0-9]"
                          f"{glob.escape(ext or '.jsonl')}"))


def _see_only(device: str) -> str:
  """Makes `device` (cuda:k) the only GPU this fresh process sees, before CUDA starts: calls that
  name no device (synchronize, empty_cache) would otherwise open a context on GPU 0 in every
  worker. Returns the device's name inside the process."""
  if not device.startswith("cuda:"):
    return device
  index = int(device.split(":")[1])
  visible = os.environ.get("CUDA_VISIBLE_DEVICES")
  ids = visible.split(",") if visible else [str(k) for k in range(index + 1)]
  os.environ["CUDA_VISIBLE_DEVICES"] = ids[index].strip()
  return "cuda:0"


def _worker(index: int, device: str, narrator_kwargs: dict, videos, part: str, settings: dict,
            messages) -> None:
  """One device's process: builds its narrator, narrates its videos, reports through
  `messages` (progress, then its summary or its error)."""
  try:
    local_device = _see_only(device)
    from data_prep.narration.narrators import BACKENDS  # pylint: disable=import-outside-toplevel
    kwargs = dict(narrator_kwargs)
    narrator = BACKENDS[kwargs.pop("backend")](device=local_device, **kwargs)
    summary = narrate(narrator, videos, part, progress=False,
                      on_progress=lambda n, w, f: messages.put(("progress", index, n, w, f)),
                      **settings)
    messages.put(("done", index, summary))
  except InputError as e:
    messages.put(("bad input", index, f"{device}: {e}"))
  except BaseException:  # pylint: disable=broad-except
    messages.put(("error", index, f"{device}: {traceback.format_exc()}"))


def narrate_on_devices(narrator_kwargs: dict, videos: list[tuple[str, str]], out: str,
                       devices: list[str], interval: float = 1.0, batch_size: int | None = None,
                       decode_workers: int = 2, allow_failures: bool = False,
                       progress: bool = True) -> dict:
  """Narrates `videos` into `out` with one worker process per device (narrator_kwargs: backend,
  model_dir, dtype, max_new_tokens, ... of the narrator each worker builds); returns a summary.
  The output and the parts an earlier run left must have been narrated with the same settings."""
  leftovers = _leftover_parts(out)
  seen = SettingsSeen()
  done = finished_videos(out, seen)
  for part in leftovers:
    done |= finished_videos(part, seen)
  seen.check_against(run_settings(narrator_settings(narrator_kwargs), interval), out)
  todo = [(vid, path) for vid, path in videos if vid not in done]
  parts = [part_path(out, k, len(devices)) for k in range(len(devices))]
  settings = {"interval": interval, "batch_size": batch_size, "decode_workers": decode_workers}
  started = time.time()
  summaries = _run_workers(narrator_kwargs, devices, [todo[k::len(devices)] for k in
                                                      range(len(devices))], parts, settings,
                           expected_frames(todo, interval) if progress else 0, progress)
  sources = [p for p in dict.fromkeys(([out] if os.path.exists(out) else []) + leftovers + parts)
             if os.path.exists(p)]
  merged = merge(sources, out, expected={vid for vid, _ in videos},
                 allow_failures=allow_failures) if sources else {"videos": 0, "failed": 0}
  for part in set(leftovers + parts) - {out}:
    for path in (part, failures_path(part)):
      if os.path.exists(path):
        os.remove(path)
  frames = sum(s["frames"] for s in summaries)
  seconds = time.time() - started
  return {"out": out, "devices": devices, "videos": merged["videos"], "videos_failed":
          merged["failed"], "videos_skipped_as_done": len(videos) - len(todo), "frames": frames,
          "seconds": round(seconds, 2), "frames_per_second": round(frames / max(seconds, 1e-9), 3),
          "workers": summaries}


def _run_workers(narrator_kwargs, devices, shares, parts, settings, total, progress) -> list:
  """Starts one process per device (spawned: CUDA does not survive a fork), shows their progress
  in one bar, and returns their summaries; a worker's error is raised after all have ended."""
  context = multiprocessing.get_context("spawn")
  messages = context.Queue()
  # Not daemonic: torch.compile starts compiler processes of its own.
  workers = {k: context.Process(target=_worker, name=f"narrate-{device}",
                                args=(k, device, narrator_kwargs, shares[k], parts[k], settings,
                                      messages))
             for k, device in enumerate(devices) if shares[k]}  # no process for an empty share
  for worker in workers.values():
    worker.start()
  bar = tqdm(total=total, unit="frame", desc=f"narrate x{len(devices)}", disable=not progress,
             dynamic_ncols=True)
  summaries, errors, finished = {}, {}, False
  try:
    while len(summaries) + len(errors) < len(workers):
      try:
        kind, index, *rest = messages.get(timeout=1.0)
      except queue.Empty:
        _note_dead_workers(workers, summaries, errors)
        continue
      if kind == "progress":
        bar.update(rest[0])
      elif kind == "done":
        summaries[index] = rest[0]
      else:
        errors[index] = (kind, rest[0])
    finished = True
  finally:
    bar.close()
    for worker in workers.values():
      if not finished:
        worker.terminate()  # the parent is going down: the parts stay for a resume
      worker.join()
  if errors:
    text = "\n".join(errors[k][1] for k in sorted(errors))
    if all(kind == "bad input" for kind, _ in errors.values()):
      raise InputError(text)
    raise RuntimeError("narration workers failed (their part files are kept; run the command "
                       "again to resume):\n" + text)
  return [summaries[k] for k in sorted(summaries)]


def _note_dead_workers(workers: dict, summaries, errors) -> None:
  """A worker that died without a word (killed, out of host memory) is an error too."""
  for index, worker in workers.items():
    if index not in summaries and index not in errors and worker.exitcode not in (None, 0):
      errors[index] = ("error", f"{worker.name}: exited with code {worker.exitcode} without a "
                                f"report")
