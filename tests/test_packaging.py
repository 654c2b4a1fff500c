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
