"""Where the time of one training step goes: kernel launches per step and the top ops.

    python bench/profile_step.py [--variant tea --lstm auto --batch 16 --length 128 --words 12]
                                 [--steps 3 --top 20 --save DIR]

Builds the step exactly as bench/train_step.py does, then reports
  * the program: HLO instructions of the optimized module, its while loops and their trip counts,
    and the launches per step it implies (every instruction outside fusions that runs a kernel,
    times the trip counts of the loops around it), grouped by model part;
  * measured steps: ms synced and pipelined (untraced);
  * a trace of `--steps` steps (jax.profiler, Perfetto JSON, read here: no TensorFlow or
    TensorBoard needed): kernels per step, device busy time, and the top ops by device time with
    the model part they belong to.
On a GPU the trace holds the device's kernels; on a CPU it holds XLA:CPU's thunks (they overlap on
several threads, so busy time is their union). While a profiler runs, XLA:GPU runs its CUDA graphs
as plain launches, so the traced step is slower than the untraced one: compare the two.
"""

import argparse
import collections
import glob
import gzip
import json
import os
import re
import shutil
import statistics
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax  # noqa: E402

from bench import train_step as bench_train  # noqa: E402

# Instructions that run no kernel of their own (bookkeeping, control flow, aliasing).
NO_LAUNCH = {"parameter", "constant", "get-tuple-element", "tuple", "bitcast", "while", "call",
             "conditional", "after-all", "opt-barrier", "add-dependency", "partition-id",
             "replica-id", "domain", "async-done", "copy-done", "send-done", "recv-done",
             "all-reduce-done", "all-gather-done", "collective-permute-done"}
_INSTRUCTION = re.compile(r"^\s*(?:ROOT\s+)?%?([\w.\-]+)\s*=\s*(.*)$")
_OPCODE = re.compile(r"([a-z][\w\-]*)\(")
_CALLEE = re.compile(r"\b(body|calls|to_apply|branch_computations|true_computation|"
                     r"false_computation|async_computation)=(\{[^}]*\}|%?[\w.\-]+)")
_TRIP = re.compile(r'"known_trip_count":\{"n":"(\d+)"')
_OP_NAME = re.compile(r'op_name="([^"]*)"')


def parse_hlo(text: str):
  """{computation: [(name, opcode, callees, trip, op_name)]} and the entry computation's name."""
  computations, entry, current = collections.defaultdict(list), None, None
  for line in text.splitlines():
    if line and not line[0].isspace():
      if line.rstrip().endswith("{"):
        head = line[len("ENTRY "):] if line.startswith("ENTRY ") else line
        current = head.split(" ", 1)[0].lstrip("%")
        entry = current if line.startswith("ENTRY ") else entry
      elif line.startswith("}"):
        current = None
      continue
    match = _INSTRUCTION.match(line)
    if current is None or match is None:
      continue
    name, rest = match.groups()
    opcode = _OPCODE.search(_after_shape(rest))
    if opcode is None:
      continue
    callees = [c for _, group in _CALLEE.findall(rest) for c in re.findall(r"%?([\w.\-]+)", group)]
    trip = _TRIP.search(rest)
    op_name = _OP_NAME.search(rest)
    computations[current].append((name, opcode.group(1), callees, int(trip.group(1)) if trip
                                  else None, op_name.group(1) if op_name else ""))
  return computations, entry


def _after_shape(rest: str) -> str:
  """The text after an instruction's result shape (a tuple shape is parenthesised)."""
  if not rest.startswith("("):
    return rest.split(" ", 1)[1] if " " in rest else ""
  depth = 0
  for i, char in enumerate(rest):
    depth += {"(": 1, ")": -1}.get(char, 0)
    if depth == 0:
      return rest[i + 1:]
  return ""


def launches(computations, entry):
  """[(op_name, runs per step, enclosing loop trips)] of every launching instruction reachable
  from the entry through control flow (fusion bodies are inside their kernel, not walked)."""
  found, todo, seen = [], [(entry, 1, ())], set()
  while todo:
    computation, runs, trips = todo.pop()
    if (computation, runs) in seen:
      continue
    seen.add((computation, runs))
    for _, opcode, callees, trip, op_name in computations.get(computation, ()):
      if opcode == "while":
        todo += [(c, runs * (trip or 1), trips + (trip,)) for c in callees]
      elif opcode in ("call", "conditional", "async-start"):
        todo += [(c, runs, trips) for c in callees]
      elif opcode not in NO_LAUNCH:
        found.append((op_name, runs, trips))
  return found


def model_part(op_name: str) -> str:
  """A short 'where' for an op: the model module path (two levels) and fwd/bwd, or the phase."""
  backward = "transpose(" in op_name
  path = [p for p in re.sub(r"\w+\(|\)", "", op_name).split("/") if p]
  path = [p for p in path if p not in ("train_step", "TEA", "jit", "")]
  # The last component is the primitive; flax module names are lower-case identifiers.
  modules = [p for p in path[:-1] if re.fullmatch(r"[a-z_0-9]+", p)]
  if not modules:
    return "(top level: optimizer, losses, glue)" if op_name else "(no metadata)"
  return "/".join(modules[:2]) + (" (bwd)" if backward else " (fwd)")


def program_report(text: str, top: int) -> None:
  """Prints the static part of the report from an optimized HLO text."""
  computations, entry = parse_hlo(text)
  instructions = sum(len(v) for v in computations.values())
  loops = [trip for v in computations.values() for _, opcode, _, trip, _ in v if opcode == "while"]
  found = launches(computations, entry)
  per_step = sum(runs for _, runs, _ in found)
  in_loops = sum(runs for _, runs, trips in found if trips)
  trips = collections.Counter(loops)
  print(f"program: {instructions} HLO instructions in {len(computations)} computations; "
        f"{len(loops)} while loops (trip count x loops: "
        f"{', '.join(f'{t} x{n}' for t, n in sorted(trips.items(), key=lambda kv: kv[0] or 0))})")
  print(f"launches per step (static: instructions outside fusions x loop trips): {per_step} "
        f"({len(found)} in the program, {in_loops} per step inside while loops)")
  parts = collections.Counter()
  for op_name, runs, _ in found:
    parts[model_part(op_name)] += runs
  for part, count in parts.most_common(top):
    print(f"  {count:7d}  {part}")


def read_trace(trace_dir: str):
  """(mode, op events of the train step's module) of the Perfetto trace under trace_dir."""
  paths = sorted(glob.glob(os.path.join(trace_dir, "**", "perfetto_trace.json.gz"), recursive=True))
  if not paths:
    raise FileNotFoundError(f"no perfetto_trace.json.gz under {trace_dir}")
  with gzip.open(paths[-1], "rt") as f:
    data = json.load(f)
  events = data["traceEvents"] if isinstance(data, dict) else data
  processes = {e["pid"]: e.get("args", {}).get("name", "") for e in events
               if e.get("ph") == "M" and e.get("name") == "process_name"}
  complete = [e for e in events if e.get("ph") == "X"]
  device = [e for e in complete if processes.get(e.get("pid"), "").startswith("/device:")]
  mode, ops = ("device kernels", device) if device else (
      "CPU thunks", [e for e in complete if "hlo_op" in e.get("args", {})])
  modules = collections.Counter(e.get("args", {}).get("hlo_module", "") for e in ops)
  step_module = [m for m in modules if "train_step" in m]
  if step_module:
    ops = [e for e in ops if e.get("args", {}).get("hlo_module", "") in step_module + [""]]
  return mode, ops


def busy_us(events) -> float:
  """Length of the union of the events' [ts, ts + dur) intervals, in us."""
  total, end = 0.0, None
  for start, stop in sorted((e["ts"], e["ts"] + e.get("dur", 0.0)) for e in events):
    if end is None or start > end:
      total, end = total + stop - start, stop
    elif stop > end:
      total, end = total + stop - end, stop
  return total


def trace_report(mode, ops, steps, op_names, top, wall_ms):
  """Prints kernels per step, busy time and the top ops by time."""
  if not ops:
    print("trace: no kernel events (was the step inside the trace?)")
    return
  durations = [e.get("dur", 0.0) for e in ops]
  busy = busy_us(ops) / steps / 1e3
  print(f"trace ({mode}, {steps} steps): {len(ops) / steps:.0f} per step, median "
        f"{statistics.median(durations):.1f} us; busy {busy:.2f} ms/step of {wall_ms:.2f} ms "
        f"traced wall ({100 * busy / wall_ms:.0f}%)")
  rows = collections.defaultdict(lambda: [0.0, 0])
  for e in ops:
    row = rows[e.get("args", {}).get("hlo_op") or e.get("name", "?")]
    row[0] += e.get("dur", 0.0)
    row[1] += 1
  total = sum(t for t, _ in rows.values())
  print(f"top {top} ops by time per step:")
  print(f"{'us/step':>9} {'n/step':>7} {'avg us':>7} {'%':>5}  op  [model part]")
  for op, (t, n) in sorted(rows.items(), key=lambda kv: -kv[1][0])[:top]:
    print(f"{t / steps:9.0f} {n / steps:7.1f} {t / n:7.1f} {100 * t / total:5.1f}  {op[:48]}  "
          f"[{model_part(op_names.get(op, ''))}]")


def traced_steps(run, steps: int, trace_dir: str) -> float:
  """Runs `steps` steps under jax.profiler; returns the traced wall ms per step."""
  with jax.profiler.trace(trace_dir, create_perfetto_trace=True):
    t0 = time.perf_counter()
    for i in range(steps):
      with jax.profiler.StepTraceAnnotation("train", step_num=i):
        loss = run()
    jax.block_until_ready(loss)
    wall = (time.perf_counter() - t0) / steps * 1e3
  return wall


def parse_args():
  parser = argparse.ArgumentParser(description=" ".join(__doc__.split("\n\n")[0].split()))
  parser.add_argument("--variant", default="tea", choices=sorted(bench_train.VARIANTS))
  parser.add_argument("--lstm", default="auto")
  parser.add_argument("--batch", type=int, default=16)
  parser.add_argument("--length", type=int, default=128)
  parser.add_argument("--words", type=int, default=12)
  parser.add_argument("--vocab", type=int, default=1200)
  parser.add_argument("--epochs", type=int, default=100)
  parser.add_argument("--repeats", type=int, default=10, help="untraced timing steps")
  parser.add_argument("--steps", type=int, default=3, help="traced steps")
  parser.add_argument("--top", type=int, default=20)
  parser.add_argument("--save", default=None, help="keep the trace and the optimized HLO here")
  return parser.parse_args()


def main():
  args = parse_args()
  device = jax.devices()[0]
  print(f"== profile_step: variant={args.variant} lstm={args.lstm} B={args.batch} L={args.length} "
        f"W={args.words} | jax {jax.__version__} {jax.default_backend()} {device.device_kind} "
        f"x{jax.device_count()}")
  mesh = bench_train.make_mesh()
  total_steps = -(-bench_train.CHARADES_CD_TRAIN // args.batch) * args.epochs
  step, arguments = bench_train.build_variant(args, mesh, args.variant, args.lstm, total_steps)
  compiled, trace_s, total_s = bench_train.compile_step(step, arguments)
  print(f"compile: trace + lower {trace_s:.1f} s, XLA {total_s - trace_s:.1f} s")
  hlo = compiled.as_text()
  program_report(hlo, args.top)
  run = bench_train.make_runner(compiled, arguments)
  first_loss, synced, pipelined = bench_train.measure(run, args.repeats)
  print(f"untraced: {1e3 * statistics.median(synced):.2f} ms/step synced, {1e3 * pipelined:.2f} "
        f"ms/step pipelined; loss of step 1 {first_loss:.6f}")
  trace_dir = args.save or tempfile.mkdtemp(prefix="tea_jax_profile_")
  try:
    wall = traced_steps(run, args.steps, trace_dir)
    computations, _ = parse_hlo(hlo)
    op_names = {name: op for v in computations.values() for name, _, _, _, op in v}
    trace_report(*read_trace(trace_dir), args.steps, op_names, args.top, wall)
    if args.save:
      with gzip.open(os.path.join(args.save, "hlo_optimized.txt.gz"), "wt") as f:
        f.write(hlo)
      print(f"trace and optimized HLO kept in {args.save}")
  finally:
    if not args.save:
      shutil.rmtree(trace_dir, ignore_errors=True)


if __name__ == "__main__":
  main()
