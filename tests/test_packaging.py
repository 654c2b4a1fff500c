"""Installation files agree with each other: every dependency pinned, the CUDA plugin at jax's
version, pyproject's dependencies satisfied by the lock, every console command importable."""

import importlib
import re
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


def test_pyproject_dependencies_are_satisfied_by_the_lock():
  project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
  lock = pins("requirements.txt")
  for spec in project["dependencies"]:
    requirement = Requirement(spec)
    name = requirement.name.lower().replace("_", "-")
    assert name in lock, f"{spec} is not in requirements.txt"
    assert requirement.specifier.contains(lock[name]), f"{spec} vs {name}=={lock[name]}"


def test_console_commands_point_at_callables():
  scripts = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["scripts"]
  for command, target in scripts.items():
    module, function = target.split(":")
    assert callable(getattr(importlib.import_module(module), function)), command
