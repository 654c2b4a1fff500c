"""Mutation check: plants small realistic bugs one at a time and says which the tests catch.

    python bench/mutations.py [--only NAME,...] [--list] [--timeout 900]

Each mutant is one textual change to one file (evaluation, losses, the model's TEA parts, the
training loop's wiring, data labels, narration alignment, ...), applied in a temporary copy of the
repository's tracked files; then the fast test files aimed at that part run there (pytest -x). A
mutant is caught when they fail. It prints a table (mutant, where, tests, caught, seconds) and
exits 1 if any mutant survives, 2 if one no longer applies (the code moved: update its text).
Run it after changing a tested part; it is not part of `make test`.
"""

import argparse
import dataclasses
import os
import pathlib
import subprocess
import sys
import tempfile
import time

REPO = pathlib.Path(__file__).resolve().parents[1]


@dataclasses.dataclass(frozen=True)
class Mutant:
  """One planted bug: `old` (found exactly once in `path`) becomes `new`."""

  name: str
  path: str
  old: str
  new: str
  tests: tuple[str, ...]
  what: str


MUTANTS = (
    Mutant("eval-iou-swapped", "tea_jax/evaluate.py",
           'metrics.iou(start_s, end_s, batch["start_time"], batch["end_time"])',
           'metrics.iou(start_s, end_s, batch["end_time"], batch["start_time"])',
           ("tests/test_evaluation_oracle.py",),
           "evaluation's IoU with the true start and end swapped"),
    Mutant("recall-strict", "tea_jax/metrics.py", "np.mean(ious >= m)", "np.mean(ious > m)",
           ("tests/test_metrics.py",), "R1@m counts IoU > m instead of >= m"),
    Mutant("end-time-exclusive", "tea_jax/metrics.py",
           "(np.asarray(end, np.float64) + 1.0) * duration / v_len",
           "np.asarray(end, np.float64) * duration / v_len",
           ("tests/test_metrics.py", "tests/test_evaluation_oracle.py"),
           "predicted end time j d / v_len instead of (j + 1) d / v_len"),
    Mutant("span-nll-range", "tea_jax/losses.py", "(idx >= lo) & (idx <= hi)",
           "(idx >= lo) & (idx < hi)", ("tests/test_losses.py",),
           "the elastic span NLL leaves out its upper bound"),
    Mutant("threshold-schedule", "tea_jax/losses.py", "(progress - 0.5) / 0.05",
           "(progress - 0.5) / 0.5", ("tests/test_losses.py", "tests/test_training_wiring.py"),
           "the IoU threshold's sigmoid ten times flatter"),
    Mutant("threshold-stuck", "tea_jax/train.py", "thresholds[schedule.epoch(step)]",
           "thresholds[0]", ("tests/test_training_wiring.py",),
           "the training loop passes the first epoch's threshold at every step"),
    Mutant("dropout-key-fixed", "tea_jax/train.py", "jax.random.fold_in(dropout_key, step)",
           "dropout_key", ("tests/test_training_wiring.py",),
           "one dropout mask for every step"),
    Mutant("lr-schedule-length", "tea_jax/optim.py",
           "learning_rate_schedule(config, total_steps)",
           "learning_rate_schedule(config, 2 * total_steps)", ("tests/test_training_wiring.py",),
           "the learning rate decays over twice the run's steps"),
    Mutant("merge-mlp-linear", "tea_jax/model/embeddings.py",
           'Dense(c.hidden, "dense_out")(nn.relu(merged))', 'Dense(c.hidden, "dense_out")(merged)',
           ("tests/test_tea_reference.py",), "the VN merge MLP without its nonlinearity"),
    Mutant("paragraph-weight-dropped", "tea_jax/model/tea.py",
           "(start_prob + c.alpha * jax.nn.softmax(p_start, -1)) / (1.0 + c.alpha)",
           "(start_prob + jax.nn.softmax(p_start, -1)) / 2.0", ("tests/test_tea_reference.py",),
           "the paragraph branch's start distribution mixed without alpha"),
    Mutant("labels-transposed", "data_prep/labels.py", "return best // v_len, best % v_len",
           "return best % v_len, best // v_len", ("tests/test_text_and_vectors.py",),
           "snippet labels (s, e) read off the grid's columns and rows"),
    Mutant("narrative-slot-shift", "data_prep/narratives.py",
           "slot = np.floor(times / width).astype(np.int64)",
           "slot = np.floor(times / width).astype(np.int64) + 1",
           ("tests/test_tea_reference.py",), "each narrative pooled into the next snippet"),
    Mutant("captions-shuffled", "data_prep/narration/pipeline.py",
           "for (vid, t, _), text in zip(items, texts):",
           "for (vid, t, _), text in zip(items, texts[::-1]):", ("tests/test_narration_order.py",),
           "a batch's captions written to its frames in reverse order"),
    Mutant("best-window-worst", "tea_jax/evaluate.py", 'if p["iou"] > best["iou"]:',
           'if p["iou"] < best["iou"]:', ("tests/test_custom_data.py",),
           "a query with several windows scored against its worst-matching one"),
)


def tracked_copy(target: pathlib.Path) -> None:
  """The repository's tracked files (and untracked ones git does not ignore) copied to `target`."""
  names = subprocess.run(["git", "ls-files", "--cached", "--others", "--exclude-standard", "-z"],
                         cwd=REPO, capture_output=True, check=True).stdout.decode().split("\0")
  for name in filter(None, names):
    source = REPO / name
    if source.is_file():
      (target / name).parent.mkdir(parents=True, exist_ok=True)
      (target / name).write_bytes(source.read_bytes())


def plant(root: pathlib.Path, mutant: Mutant) -> bool:
  """Applies the mutant in `root`; False when its text is not found exactly once."""
  path = root / mutant.path
  text = path.read_text(encoding="utf-8")
  if text.count(mutant.old) != 1:
    return False
  path.write_text(text.replace(mutant.old, mutant.new), encoding="utf-8")
  return True


def run_tests(root: pathlib.Path, tests: tuple[str, ...], timeout: float) -> tuple[bool, str]:
  """(whether the tests failed, pytest's last line) in `root`."""
  # The copy lives elsewhere: point the tests that read the shared data at the checkout's.
  env = dict(os.environ, PYTHONDONTWRITEBYTECODE="1",
             TEA_SHARED=os.environ.get("TEA_SHARED", str(REPO.parent / "shared")))
  try:
    proc = subprocess.run([sys.executable, "-m", "pytest", "-q", "-x", "-p", "no:cacheprovider",
                           *tests], cwd=root, env=env, capture_output=True, text=True,
                          timeout=timeout, check=False)
  except subprocess.TimeoutExpired:
    return False, f"timed out after {timeout:.0f} s"
  lines = [line for line in proc.stdout.splitlines() if line.strip()]
  return proc.returncode != 0, (lines[-1] if lines else proc.stderr.strip()[-200:])


def main(argv=None) -> int:
  """The command: every mutant (or those of --only), a table, and the exit status."""
  parser = argparse.ArgumentParser(description=" ".join(__doc__.split("\n\n")[0].split()))
  parser.add_argument("--only", help="comma-separated mutant names")
  parser.add_argument("--list", action="store_true", help="list the mutants and exit")
  parser.add_argument("--timeout", type=float, default=900.0, help="seconds per mutant's tests")
  args = parser.parse_args(argv)
  chosen = [m for m in MUTANTS if not args.only or m.name in args.only.split(",")]
  if args.list or not chosen:
    for m in MUTANTS:
      print(f"{m.name:26s} {m.path:32s} {m.what}")
    return 0 if args.list else 2
  print("| mutant | where | tests | caught | seconds |\n| --- | --- | --- | --- | --- |")
  survived, stale = [], []
  for mutant in chosen:
    started = time.time()
    with tempfile.TemporaryDirectory(prefix="tea_mutant_") as folder:
      root = pathlib.Path(folder)
      tracked_copy(root)
      if not plant(root, mutant):
        stale.append(mutant.name)
        print(f"| {mutant.name} | {mutant.path} | - | no longer applies | 0 |", flush=True)
        continue
      caught, last = run_tests(root, mutant.tests, args.timeout)
    if not caught:
      survived.append(mutant.name)
    print(f"| {mutant.name} ({mutant.what}) | {mutant.path} | {', '.join(mutant.tests)} | "
          f"{'yes' if caught else 'NO'}: {last} | {time.time() - started:.0f} |", flush=True)
  print(f"\n{len(chosen) - len(survived) - len(stale)} of {len(chosen)} mutants caught"
        + (f"; survived: {', '.join(survived)}" if survived else "")
        + (f"; no longer apply: {', '.join(stale)}" if stale else ""))
  return 2 if stale else (1 if survived else 0)


if __name__ == "__main__":
  sys.exit(main())
