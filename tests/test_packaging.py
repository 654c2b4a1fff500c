"""Installation files agree with each other: every dependency pinned, the CUDA plugin at jax's
version, pyproject's dependencies satisfied by the lock, every console command importable."""

import importlib
import re
import shutil
import subprocess
import sys
import tomllib


from conftest import REPO
from packaging.requirements import Requirement

PIN = re.compile(r"^([A-Za-z0-9_.\-]+)(\[[\w,\-]+\])?==([\w.+\-]+)$")


def pins(name: str) -> dict[str, str]:
  """{normalised package name: version} of a requirements file; every line must be a pin."""
  found = {}
  for line in (REPO / name).read_text().splitlines():
    line = line.strip()
    if not line or line.startswith(("#", "-r ")):
      continue
    match = PIN.match(line)
    assert match, f"{name}: not pinned as name==version: {line!r}"
    found[match.group(1).lower().replace("_", "-")] = match.group(3)
  return found


def test_every_dependency_is_pinned_and_torch_is_the_cpu_build():
  lock = pins("requirements.txt")
  assert lock["torch"] == "2.13.0"
  assert "clu" in lock and "orbax-checkpoint" in lock


def test_cuda_plugin_matches_the_pinned_jax():
  lock, cuda = pins("requirements.txt"), pins("requirements-cuda.txt")
  assert "-r requirements.txt" in (REPO / "requirements-cuda.txt").read_text()
  assert cuda["jax-cuda12-plugin"] == cuda["jax-cuda12-pjrt"] == lock["jax"] == lock["jaxlib"]
  assert not set(cuda) & set(lock)  # the CUDA file only adds


# The CUDA release whose ptxas first assembles the PTX a jax version's Triton writes (jax 0.10.2:
# PTX ISA 8.8, which 12.8's ptxas rejects); `python bench/kernel_report.py --check` measures it.
PTX_RELEASE = {"0.10.2": (12, 9)}


def test_cuda_compiler_and_linker_are_one_release_that_takes_the_pinned_jax_ptx():
  lock, cuda = pins("requirements.txt"), pins("requirements-cuda.txt")
  assert lock["jax"] in PTX_RELEASE, "new jax: check its kernels with bench/kernel_report.py"
  release = lambda version: tuple(int(part) for part in version.split(".")[:2])
  toolkit = {name: release(cuda[name]) for name in (
      "nvidia-cuda-nvcc-cu12", "nvidia-nvjitlink-cu12", "nvidia-cuda-nvrtc-cu12",
      "nvidia-cuda-runtime-cu12", "nvidia-cuda-cupti-cu12")}
  assert len(set(toolkit.values())) == 1, f"one CUDA release expected: {toolkit}"
  assert min(toolkit.values()) >= PTX_RELEASE[lock["jax"]], toolkit


def project() -> dict:
  return tomllib.loads((REPO / "pyproject.toml").read_text())["project"]


def test_pyproject_dependencies_are_satisfied_by_the_lock():
  lock = pins("requirements.txt")
  specs = list(project()["dependencies"])
  for extra, listed in project()["optional-dependencies"].items():
    if extra != "cuda":  # requirements-cuda.txt pins it
      specs += [s for s in listed if Requirement(s).name != "tea_jax"]
  for spec in specs:
    requirement = Requirement(spec)
    name = requirement.name.lower().replace("_", "-")
    assert name in lock, f"{spec} is not in requirements.txt"
    assert requirement.specifier.contains(lock[name]), f"{spec} vs {name}=={lock[name]}"


def test_the_library_needs_no_pytorch():
  # torch, transformers and PyAV are the offline side's (the `prep` extra), not the library's.
  names = {Requirement(s).name.lower() for s in project()["dependencies"]}
  assert not names & {"torch", "transformers", "av", "nltk", "matplotlib"}
  assert {"torch", "transformers", "av"} <= {
      Requirement(s).name.lower() for s in project()["optional-dependencies"]["prep"]}


def test_the_library_imports_in_a_fresh_virtualenv_without_pytorch(tmp_path):
  # `pip install --no-deps .` plus the library's dependencies pinned as the lock pins them (and
  # whatever they pull in, held to the lock): the training and evaluation modules import, and
  # neither PyTorch nor transformers is there.
  venv = tmp_path / "venv"
  subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
  python = str(venv / "bin" / "python")
  pip = [python, "-m", "pip", "install", "--quiet", "--disable-pip-version-check"]
  lock = pins("requirements.txt")
  library = [f"{Requirement(s).name}=={lock[Requirement(s).name.lower().replace('_', '-')]}"
             for s in project()["dependencies"]]
  source = tmp_path / "source"  # a copy: building in the checkout would leave build/ there
  source.mkdir()
  for name in ("pyproject.toml", "README.md"):
    shutil.copy(REPO / name, source / name)
  for name in ("tea_jax", "data_prep", "tea_apps", "configs"):
    shutil.copytree(REPO / name, source / name, ignore=shutil.ignore_patterns("__pycache__"))
  subprocess.run(pip + ["--no-deps", str(source)], check=True, cwd=tmp_path)
  subprocess.run(pip + ["-c", str(REPO / "requirements.txt")] + library, check=True, cwd=tmp_path)
  code = ("import importlib.util, tea_jax.main, tea_jax.train, tea_jax.evaluate, "
          "tea_jax.inference, tea_jax.import_emb\n"
          "assert tea_jax.__file__.startswith(sys.prefix), tea_jax.__file__\n"
          "print([m for m in ('torch', 'transformers', 'av') if importlib.util.find_spec(m)])")
  proc = subprocess.run([python, "-c", "import sys\n" + code], cwd=tmp_path,
                        capture_output=True, text=True)
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert proc.stdout.strip() == "[]"


def test_console_commands_point_at_callables():
  scripts = project()["scripts"]
  for command, target in scripts.items():
    module, function = target.split(":")
    assert callable(getattr(importlib.import_module(module), function)), command
