"""What the GPU compiler makes of the Pallas LSTM kernels, on a machine without a GPU.

    python bench/kernel_report.py [--archs 8.0,9.0] [--variants tea,emb] [--check]
                                  [--length 128 --batch 16 --hidden 128] [--cache DIR] [--keep DIR]

Exports the forward and backward of `bilstm.lstm_lanes(..., "pallas")` (the BiLSTM recurrences of
the train step, tea_jax/model/lstm_kernel.py) for CUDA at the training shapes (TEA: 4 lanes, the
video and paragraph predictors' encoders in both directions; EMB: 2 lanes), takes the Triton IR
out of each kernel call, and compiles it as XLA would on the card, but without one:
  * Triton IR -> PTX with the Triton pipeline bundled in the pinned jax CUDA plugin
    (`jax_cuda12_plugin.cuda_plugin_extension.compile_triton_to_asm`, needs no device);
  * PTX -> cubin with the pinned ptxas (`ptxas -v`: registers, spills);
  * cubin -> SASS with cuobjdump, whose recurrence loop (the outermost loop of the kernel) gives
    the machine instructions per time step.
It prints one row per kernel and architecture: programs in the grid, warps, registers per thread,
spilled bytes, shared memory, SASS instructions per step and an estimated time per step, whose
assumptions are printed below the table. `--check` exits with 1 if a kernel fails to compile or
spills.

Without a device Pallas lowers the kernels as for compute capability 9.0; the IR is then compiled
for each architecture asked for. The wheels it needs (the plugin and PJRT plugin at jax's
version, the nvcc of requirements-cuda.txt for ptxas, cuobjdump and the nvdisasm it runs) are
fetched once with pip into `--cache` (default ~/.cache/tea_jax/kernel_report); nothing is
installed into the running environment. Runs on the CPU.
"""

import argparse
import contextlib
import dataclasses
import os
import pathlib
import re
import subprocess
import sys
import tempfile
import textwrap
import zipfile

REPO = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
from jax import export  # noqa: E402

from tea_jax.model import bilstm, lstm_kernel  # noqa: E402

# cuobjdump (and the nvdisasm it runs) only read the cubins; pip has them as CUDA 13 packages
# only, which still read sm_80 and sm_90 code.
DISASSEMBLERS = (("nvidia-cuda-cuobjdump", "13.2.86"), ("nvidia-cuda-nvdisasm", "13.2.86"))
TRITON_CALL = "__gpu$xla.gpu.triton"
VARIANT_LANES = {"tea": 4, "emb": 2}  # both directions of 2 BiLSTMs (TEA) or of 1 (EMB)

# What the time estimate assumes per architecture (the SXM cards): the clock under load (GHz);
# dense tensor-core multiply-adds per clock and SM for mma.sync (Hopper's faster wgmma is not what
# Triton emits here) by operand type; bytes per clock one SM moves to and from L2; KiB of its
# combined L1 cache and shared memory.
CHIPS = {
    "9.0": dict(card="H100", ghz=1.755, fma_per_clock={"TF32": 512, "BF16": 1024, "F16": 1024},
                l2_bytes_per_clock=64, l1_shared_kib=256),
    "8.0": dict(card="A100", ghz=1.41, fma_per_clock={"TF32": 512, "BF16": 1024, "F16": 1024},
                l2_bytes_per_clock=64, l1_shared_kib=192),
}
SCHEDULERS_PER_SM = 4  # each issues at most one warp instruction per clock
# Multiply-adds of one HMMA instruction by its shape (M N K digits in the opcode).
HMMA_SHAPES = {"1688": 16 * 8 * 8, "16816": 16 * 8 * 16, "16832": 16 * 8 * 32}
ACCESS_BYTES = {"128": 16, "64": 8, "U16": 2, "S16": 2, "U8": 1, "S8": 1}


@dataclasses.dataclass
class Tools:
  """Paths of the unpacked wheels."""
  plugin: pathlib.Path  # holds jax_cuda12_plugin/
  pjrt_library: pathlib.Path  # xla_cuda_plugin.so
  ptxas: pathlib.Path
  cuobjdump: pathlib.Path
  nvdisasm: pathlib.Path


@dataclasses.dataclass
class KernelCall:
  """One Triton kernel call of the exported program."""
  name: str
  grid: tuple[int, int, int]
  num_warps: int
  num_stages: int
  ir: bytes


@dataclasses.dataclass
class Row:
  """What the report prints for one kernel on one architecture."""
  variant: str
  kernel: str
  arch: str
  programs: int
  warps: int
  registers: int = 0
  spill_stores: int = 0
  spill_loads: int = 0
  shared_bytes: int = 0
  loop: dict = dataclasses.field(default_factory=dict)
  estimate: dict = dataclasses.field(default_factory=dict)
  error: str = ""


def requirement_pins(path: pathlib.Path) -> dict[str, str]:
  """{package name: version} of the `name==version` lines of a requirements file."""
  pins = {}
  for line in path.read_text().splitlines():
    match = re.match(r"^([A-Za-z0-9_.\-]+)(\[[\w,\-]+\])?==([\w.+\-]+)\s*$", line.strip())
    if match:
      pins[match.group(1).lower().replace("_", "-")] = match.group(3)
  return pins


def fetch_wheel(name: str, version: str, cache: pathlib.Path) -> pathlib.Path:
  """The folder where the wheel name==version is unpacked, downloading it with pip once."""
  folder = cache / f"{name}-{version}"
  if (folder / ".unpacked").exists():
    return folder
  with tempfile.TemporaryDirectory(dir=cache) as download:
    run = subprocess.run([sys.executable, "-m", "pip", "download", "--quiet", "--no-deps",
                          "--only-binary=:all:", "--dest", download, f"{name}=={version}"],
                         capture_output=True, text=True, check=False)
    if run.returncode:
      raise SystemExit(f"pip download {name}=={version} failed:\n{run.stderr.strip()[-2000:]}")
    [wheel] = pathlib.Path(download).glob("*.whl")
    with zipfile.ZipFile(wheel) as archive:
      for member in archive.infolist():
        path = archive.extract(member, folder)
        # Wheels keep the executable bit in the zip entry's upper attribute bits.
        mode = (member.external_attr >> 16) & 0o777
        if mode:
          os.chmod(path, mode)
  (folder / ".unpacked").touch()
  return folder


def fetch_tools(cache: pathlib.Path) -> Tools:
  """The pinned plugin, PJRT plugin and ptxas (requirements-cuda.txt) and cuobjdump, unpacked."""
  cache.mkdir(parents=True, exist_ok=True)
  pins = requirement_pins(REPO / "requirements-cuda.txt")
  if pins.get("jax-cuda12-plugin") != jax.__version__:
    raise SystemExit(f"requirements-cuda.txt pins jax-cuda12-plugin=="
                     f"{pins.get('jax-cuda12-plugin')} but this jax is {jax.__version__}: the "
                     f"plugin must be the version that wrote the kernels' IR")
  folders = {name: fetch_wheel(name, pins[name], cache)
             for name in ("jax-cuda12-plugin", "jax-cuda12-pjrt", "nvidia-cuda-nvcc-cu12")}
  cuobjdump, nvdisasm = (fetch_wheel(name, version, cache) for name, version in DISASSEMBLERS)
  find = lambda folder, pattern: next(folder.rglob(pattern))
  return Tools(plugin=folders["jax-cuda12-plugin"],
               pjrt_library=find(folders["jax-cuda12-pjrt"], "xla_cuda_plugin.so"),
               ptxas=find(folders["nvidia-cuda-nvcc-cu12"], "bin/ptxas"),
               cuobjdump=find(cuobjdump, "bin/cuobjdump"), nvdisasm=find(nvdisasm, "bin/nvdisasm"))


def export_kernels(lanes: int, steps: int, batch: int, hidden: int) -> list[KernelCall]:
  """The Triton kernel calls of the forward and backward of `lanes` LSTM lanes, exported for
  CUDA as the train step uses them (through lstm_lanes' custom VJP)."""

  def loss(gates, masks, w_hh):
    out = bilstm.lstm_lanes(gates, masks, w_hh, "pallas")
    return sum(jnp.sum(o * o) for o in out)

  gates = tuple(jax.ShapeDtypeStruct((steps, batch, 4 * hidden), jnp.float32)
                for _ in range(lanes))
  masks = tuple(jax.ShapeDtypeStruct((steps, batch, 1), jnp.float32) for _ in range(lanes))
  w_hh = jax.ShapeDtypeStruct((lanes, hidden, 4 * hidden), jnp.float32)
  checks = [export.DisabledSafetyCheck.custom_call(TRITON_CALL)]
  # The kernels are interpreted wherever JAX's backend is not a GPU: lower them for Triton here.
  with _patched(lstm_kernel, "interpret_mode", lambda: False):
    exported = export.export(jax.jit(jax.grad(loss, argnums=(0, 2))), platforms=["cuda"],
                             disabled_checks=checks)(gates, masks, w_hh)
  return triton_calls(exported.mlir_module())


@contextlib.contextmanager
def _patched(owner, attribute, value):
  """Sets owner.attribute to value for the duration of the block."""
  original = getattr(owner, attribute)
  setattr(owner, attribute, value)
  try:
    yield
  finally:
    setattr(owner, attribute, original)


def triton_calls(module_text: str) -> list[KernelCall]:
  """Every Triton custom call of a StableHLO module, with its launch configuration and IR."""
  from jax._src.interpreters import mlir  # pylint: disable=import-outside-toplevel
  from jax._src.lib.mlir import ir  # pylint: disable=import-outside-toplevel
  calls = []

  def visit(operation):
    for region in operation.regions:
      for block in region:
        for op in block.operations:
          op = op.operation
          if (op.name == "stablehlo.custom_call"
              and ir.StringAttr(op.attributes["call_target_name"]).value == TRITON_CALL):
            config = ir.DictAttr(op.attributes["mhlo.backend_config"])
            value = lambda key, config=config: ir.IntegerAttr(config[key]).value
            calls.append(KernelCall(
                name=ir.StringAttr(config["name"]).value,
                grid=(value("grid_x"), value("grid_y"), value("grid_z")),
                num_warps=value("num_warps"), num_stages=value("num_stages"),
                ir=ir.StringAttr(config["ir"]).value_bytes))
          visit(op)

  with mlir.make_ir_context():
    visit(ir.Module.parse(module_text).operation)
  return calls


class TritonCompiler:
  """Triton IR -> PTX with the pinned plugin's Triton pipeline (no device needed)."""

  def __init__(self, tools: Tools):
    sys.path.insert(0, str(tools.plugin))
    # pylint: disable=import-outside-toplevel,import-error
    from jax._src.lib import xla_client
    from jax_cuda12_plugin import cuda_plugin_extension
    self._extension = cuda_plugin_extension
    self._c_api = xla_client.load_pjrt_plugin_dynamically("cuda", str(tools.pjrt_library))

  def __call__(self, call: KernelCall, arch: str) -> tuple[str, int]:
    """(PTX, shared memory bytes) of a kernel call compiled for compute capability `arch`."""
    result = self._extension.compile_triton_to_asm(self._c_api, call.ir, arch, call.num_warps, 1,
                                                   call.num_stages)
    return result.asm, result.smem_bytes


def assemble(ptx: str, ptxas: pathlib.Path, folder: pathlib.Path, stem: str) -> dict:
  """Assembles PTX for the architecture it targets: the cubin's path, registers and spills."""
  target = re.search(r"^\.target\s+(\w+)", ptx, re.M)
  if target is None:
    raise RuntimeError("the PTX names no .target")
  ptx_path, cubin = folder / f"{stem}.ptx", folder / f"{stem}.cubin"
  ptx_path.write_text(ptx)
  run = subprocess.run([str(ptxas), "-v", "-O3", "--gpu-name", target.group(1), str(ptx_path),
                        "-o", str(cubin)], capture_output=True, text=True, check=False)
  if run.returncode:
    errors = [line for line in run.stderr.splitlines() if "error" in line or "fatal" in line]
    raise RuntimeError(f"{ptxas.name}: {errors[0].strip() if errors else run.stderr.strip()}")
  log = run.stderr + run.stdout
  registers = re.search(r"Used (\d+) registers", log)
  spills = re.search(r"(\d+) bytes spill stores, (\d+) bytes spill loads", log)
  if registers is None or spills is None:
    raise RuntimeError(f"ptxas -v printed no register or spill count: {log[:300]!r}")
  return dict(cubin=cubin, registers=int(registers.group(1)),
              spill_stores=int(spills.group(1)), spill_loads=int(spills.group(2)))


# One SASS instruction in cuobjdump's listing: /*0a30*/  @!P0 FFMA R4, R5, R6, R7 ;
_SASS = re.compile(r"^\s+/\*([0-9a-f]{4,6})\*/\s+(.*?)\s*;")


def sass_instructions(listing: str) -> list[tuple[int, str]]:
  """(address, instruction text) of every instruction in a cuobjdump -sass listing of one
  kernel (branches name absolute addresses there)."""
  return [(int(m.group(1), 16), m.group(2)) for m in map(_SASS.match, listing.splitlines()) if m]


def opcode(text: str) -> str:
  """The opcode of a SASS instruction without its predicate and modifiers: FFMA, HMMA, ..."""
  return re.sub(r"^@!?U?P[T\d]+\s+", "", text).split()[0].split(".")[0]


def recurrence_loop(instructions: list[tuple[int, str]]) -> dict:
  """Instruction counts of the outermost loop (a backward branch spanning the most code): the
  body of one time step, inner loops counted once."""
  loops = []
  for address, text in instructions:
    target = re.search(r"\bBRA\s+(?:\S+\s+)?0x([0-9a-f]+)", text)
    if target and int(target.group(1), 16) < address:  # not the self-branch ending a kernel
      loops.append((int(target.group(1), 16), address))
  if not loops:
    raise RuntimeError("no loop in the SASS: the recurrence was unrolled or not found")
  start, end = max(loops, key=lambda span: span[1] - span[0])
  body = [text for address, text in instructions if start <= address <= end]
  counts = {}
  for text in body:
    counts[opcode(text)] = counts.get(opcode(text), 0) + 1
  # Loops inside the step run more than once per step: the count is then a lower bound.
  inner = sum(1 for span in loops if span != (start, end) and start <= span[0] < span[1] <= end)
  return dict(total=len(body), counts=counts, instructions=body, inner_loops=inner)


def disassemble(cubin: pathlib.Path, tools: Tools) -> str:
  """cuobjdump's SASS listing of a cubin."""
  run = subprocess.run([str(tools.cuobjdump), "-sass", str(cubin)], capture_output=True,
                       text=True, check=False,
                       env=dict(os.environ, NVDISASM_PATH=str(tools.nvdisasm.parent)))
  if run.returncode or "Function" not in run.stdout:
    raise RuntimeError(f"cuobjdump: {(run.stderr or run.stdout).strip()[:300]}")
  return run.stdout


def access_bytes(text: str) -> int:
  """Bytes one thread moves with a global load or store (LDG.E.128 -> 16)."""
  modifiers = text.split()[0].split(".")[1:] if not text.startswith("@") else (
      text.split()[1].split(".")[1:])
  return next((ACCESS_BYTES[m] for m in modifiers if m in ACCESS_BYTES), 4)


def estimate_step(loop: dict, warps: int, arch: str, shared_bytes: int) -> dict:
  """Lower bounds of one recurrence step's time (us) from instruction issue, the tensor cores and
  L2 traffic, with the largest as the estimate (see ASSUMPTIONS)."""
  chip = CHIPS[arch]
  issue = loop["total"] * warps / SCHEDULERS_PER_SM
  tensor = 0.0
  moved = {"LDG": 0, "LDG.EL": 0, "STG": 0}  # bytes per step, all threads
  for text in loop["instructions"]:
    op = opcode(text)
    if op == "HMMA":
      shape = re.search(r"HMMA\.(\d+)\.F32\.(\w+)", text)
      if shape:
        rate = chip["fma_per_clock"].get(shape.group(2), chip["fma_per_clock"]["BF16"])
        tensor += HMMA_SHAPES.get(shape.group(1), 0) * warps / rate
    elif op in ("LDG", "STG"):
      kept = op == "LDG" and ".EL" in text.split()[1 if text.startswith("@") else 0]
      moved["LDG.EL" if kept else op] += access_bytes(text) * 32 * warps
  # Loads marked evict-last (the weights read at every step) hit L1 from the second step on if
  # they fit in what L1 leaves beside the kernel's shared memory.
  l1_free = chip["l1_shared_kib"] * 1024 - shared_bytes
  l2_bytes = moved["LDG"] + moved["STG"] + (moved["LDG.EL"] if moved["LDG.EL"] > l1_free else 0)
  cycles = dict(issue=issue, tensor=tensor, l2=l2_bytes / chip["l2_bytes_per_clock"])
  bound = max(cycles, key=cycles.get)
  return dict(us=cycles[bound] / chip["ghz"] / 1000, bound=bound, l2_kib=l2_bytes / 1024,
              l1_kib=(moved["LDG.EL"] if l2_bytes < sum(moved.values()) else 0) / 1024,
              **{f"{name}_us": value / chip["ghz"] / 1000 for name, value in cycles.items()})


ASSUMPTIONS = """\
Estimated time per step: the largest of three lower bounds for one program on one SM (the
programs of a launch run on separate SMs at once): instruction issue (SASS per step x warps / 4
schedulers, one instruction per clock each), tensor cores (the loop's HMMA multiply-adds at
mma.sync rates) and L2 traffic (the loop's global loads and stores; loads marked evict-last, the
recurrent weights' high parts, are counted as L1 hits where they fit beside the shared memory).
Assumed per SM: {chips}. Not modelled: the latency of each step's dependent chain (loads, matmuls,
activations, stores, barriers): real steps take longer."""


def chip_assumptions(archs) -> str:
  """One line per architecture of the figures the estimate assumes."""
  return "; ".join(
      f"{CHIPS[a]['card']} (sm_{a.replace('.', '')}) {CHIPS[a]['ghz']} GHz, "
      + ", ".join(f"{n} {k} FMA" for k, n in CHIPS[a]["fma_per_clock"].items())
      + f", {CHIPS[a]['l2_bytes_per_clock']} L2 bytes per clock, {CHIPS[a]['l1_shared_kib']} KiB"
      " of L1 and shared memory" for a in archs)


def compile_rows(calls: dict, archs: list[str], tools: Tools, keep: pathlib.Path) -> list[Row]:
  """Compiles, assembles and disassembles every kernel call for every architecture."""
  compiler = TritonCompiler(tools)
  rows = []
  for variant, kernels in calls.items():
    for call in kernels:
      for arch in archs:
        row = Row(variant, call.name, arch, call.grid[0] * call.grid[1] * call.grid[2],
                  call.num_warps)
        stem = f"{variant}.{call.name}.sm{arch.replace('.', '')}"
        try:
          ptx, row.shared_bytes = compiler(call, arch)
          assembled = assemble(ptx, tools.ptxas, keep, stem)
          row.registers = assembled["registers"]
          row.spill_stores, row.spill_loads = assembled["spill_stores"], assembled["spill_loads"]
          listing = disassemble(assembled["cubin"], tools)
          (keep / f"{stem}.sass").write_text(listing)
          row.loop = recurrence_loop(sass_instructions(listing))
          row.estimate = estimate_step(row.loop, call.num_warps, arch, row.shared_bytes)
        except Exception as e:  # pylint: disable=broad-except  # reported in the table
          first_line = str(e).strip().splitlines()[0][:200] if str(e).strip() else ""
          row.error = f"{type(e).__name__}: {first_line}"
        rows.append(row)
  return rows


def print_table(rows: list[Row], steps: int) -> None:
  """The per-kernel table (markdown), then the estimate's assumptions."""
  print("| variant | kernel | arch | programs | warps | registers | spills st/ld B | shared KiB "
        "| SASS per step (HMMA) | KiB per step: L2 (L1) | us per step: issue / tensor / L2 "
        "| estimate us |")
  print("| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |")
  for r in rows:
    head = f"| {r.variant} | {r.kernel} | sm_{r.arch.replace('.', '')} | {r.programs} | {r.warps}"
    if r.error:
      print(f"{head} | FAILED: {r.error} ||||||||")
      continue
    e = r.estimate
    print(f"{head} | {r.registers} | {r.spill_stores} / {r.spill_loads} | "
          f"{r.shared_bytes / 1024:.0f} | {'>= ' if r.loop['inner_loops'] else ''}"
          f"{r.loop['total']:,} ({r.loop['counts'].get('HMMA', 0)}) "
          f"| {e['l2_kib']:.0f} ({e['l1_kib']:.0f}) | {e['issue_us']:.2f} / "
          f"{e['tensor_us']:.2f} / {e['l2_us']:.2f} "
          f"| {e['us']:.2f} ({e['bound']}) |")
  print()
  text = ASSUMPTIONS.format(chips=chip_assumptions(sorted({r.arch for r in rows})))
  print(textwrap.fill(" ".join(text.split()), width=100))
  for variant in sorted({r.variant for r in rows}):
    for arch in sorted({r.arch for r in rows}):
      kernels = [r for r in rows if r.variant == variant and r.arch == arch and not r.error]
      if len(kernels) == 2:
        # Each train step launches every kernel twice: the start encoders, then the end encoders.
        total = 2 * steps * sum(r.estimate["us"] for r in kernels) / 1000
        print(f"{variant}, sm_{arch.replace('.', '')}: the recurrences of one train step >= "
              f"{total:.2f} ms (2 x {steps} steps forward and backward)")


def parse_args(argv=None):
  parser = argparse.ArgumentParser(description=" ".join(__doc__.split("\n\n")[0].split()))
  parser.add_argument("--archs", default="8.0,9.0", help="compute capabilities")
  parser.add_argument("--variants", default="tea,emb", help=f"of {sorted(VARIANT_LANES)}")
  parser.add_argument("--length", type=int, default=128, help="time steps L")
  parser.add_argument("--batch", type=int, default=16, help="samples B")
  parser.add_argument("--hidden", type=int, default=128, help="hidden units H")
  parser.add_argument("--precision", default="default", choices=("default", "highest"),
                      help="jax_default_matmul_precision while exporting (training: default)")
  parser.add_argument("--cache", default=str(pathlib.Path.home() / ".cache/tea_jax/kernel_report"),
                      help="where the wheels are fetched and unpacked")
  parser.add_argument("--keep", default=None, help="write the PTX, cubins and SASS here")
  parser.add_argument("--check", action="store_true",
                      help="exit with 1 if a kernel fails to compile or spills registers")
  return parser.parse_args(argv)


def main(argv=None) -> int:
  args = parse_args(argv)
  # Nothing here runs on a device, even where there is one.
  jax.config.update("jax_platforms", "cpu")
  os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # the plugin's "no CUDA driver" notices
  archs = args.archs.split(",")
  variants = args.variants.split(",")
  for name, known in (("arch", CHIPS), ("variant", VARIANT_LANES)):
    unknown = [v for v in (archs if name == "arch" else variants) if v not in known]
    if unknown:
      raise SystemExit(f"unknown {name} {unknown[0]!r}: expected one of {sorted(known)}")
  tools = fetch_tools(pathlib.Path(args.cache).expanduser())
  with jax.default_matmul_precision(args.precision):
    calls = {v: export_kernels(VARIANT_LANES[v], args.length, args.batch, args.hidden)
             for v in variants}
  print(f"jax {jax.__version__}; Triton of {tools.plugin.name}, ptxas of "
        f"{tools.ptxas.parents[3].name}, {tools.cuobjdump.parents[3].name}; L={args.length} "
        f"B={args.batch} H={args.hidden}, matmul precision {args.precision}")
  with contextlib.ExitStack() as stack:
    keep = (pathlib.Path(args.keep) if args.keep
            else pathlib.Path(stack.enter_context(tempfile.TemporaryDirectory())))
    keep.mkdir(parents=True, exist_ok=True)
    rows = compile_rows(calls, archs, tools, keep)
  print_table(rows, args.length)
  failed = [r for r in rows if r.error or r.spill_stores or r.spill_loads]
  if args.check and failed:
    print(f"check failed: {len(failed)} kernel(s) failed to compile or spill", file=sys.stderr)
    return 1
  return 0


if __name__ == "__main__":
  sys.exit(main())
