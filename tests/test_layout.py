"""Three layers, imports one way (docs/design.md section 15): the library (tea_jax) never reaches
the offline side (data_prep) or the apps (tea_apps); the offline side uses only the library's
pieces that carry no model or training; the apps use both; torch stays out of the library's module
level. Every file of each package is checked, with no exemption by path."""

import ast
import pathlib
import shutil

from conftest import REPO

LIBRARY, OFFLINE, APPS = "tea_jax", "data_prep", "tea_apps"
# What the offline side may use of the library: the record schema, the config rules, errors,
# files, logging and command plumbing, IoU, and the I3D feature extractor.
OFFLINE_MAY_USE = ("tea_jax.config_checks", "tea_jax.data.schema", "tea_jax.errors",
                   "tea_jax.files", "tea_jax.cli", "tea_jax.metrics", "tea_jax.i3d")
# Never imported at a module's top by the library or the apps: a command that needs none of them
# (training, predict on features) must start without PyTorch.
HEAVY = ("torch", "transformers", "av")
# The library's importers of PyTorch checkpoints, the only modules that import torch (lazily).
TORCH_IMPORTERS = ("tea_jax/import_emb.py", "tea_jax/i3d/importer.py")
NOT_PACKAGES = ("tests", "bench")


def imports(path: pathlib.Path):
  """(module, whether at module level) for every module a file imports. `from pkg import x` of a
  top-level package imports the module pkg.x; `from pkg.mod import x` imports pkg.mod."""
  tree = ast.parse(path.read_text(encoding="utf-8"))
  top_level = {id(node) for node in tree.body}
  for node in ast.walk(tree):
    if isinstance(node, ast.Import):
      modules = [alias.name for alias in node.names]
    elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
      bare = "." not in node.module
      modules = [f"{node.module}.{a.name}" for a in node.names] if bare else [node.module]
    else:
      continue
    for module in modules:
      yield module, id(node) in top_level


def _is(name: str, *packages: str) -> bool:
  return any(name == p or name.startswith(p + ".") for p in packages)


def _library(rel: str, name: str, top: bool) -> str | None:
  if _is(name, OFFLINE, APPS, *NOT_PACKAGES):
    return f"the library imports {name}"
  if _is(name, *HEAVY) and (top or rel not in TORCH_IMPORTERS or not _is(name, "torch")):
    return f"the library imports {name}" + (" at module level" if top else "")
  return None


def _offline(rel: str, name: str, top: bool) -> str | None:
  del rel, top
  if _is(name, APPS, *NOT_PACKAGES):
    return f"the offline side imports {name}"
  if _is(name, LIBRARY) and not _is(name, *OFFLINE_MAY_USE):
    return f"the offline side imports {name} (it may use {OFFLINE_MAY_USE})"
  return None


def _apps(rel: str, name: str, top: bool) -> str | None:
  del rel
  if _is(name, *NOT_PACKAGES):
    return f"an app imports {name}"
  if top and _is(name, *HEAVY):
    return f"an app imports {name} at module level (import it where it is needed)"
  return None


RULES = {LIBRARY: _library, OFFLINE: _offline, APPS: _apps}


def violations(root: pathlib.Path) -> list[str]:
  """Every import that breaks the rules, as 'file: reason'."""
  found = []
  for package, rule in RULES.items():
    for path in sorted((root / package).glob("**/*.py")):
      rel = path.relative_to(root).as_posix()
      for name, top in imports(path):
        reason = rule(rel, name, top)
        if reason:
          found.append(f"{rel}: {reason}")
  return found


def test_imports_run_one_way():
  assert violations(REPO) == []


def test_every_package_is_one_of_the_three_layers():
  packages = {p.parent.name for p in REPO.glob("*/__init__.py")} - {"configs", *NOT_PACKAGES}
  assert packages == set(RULES)


def test_a_planted_import_is_caught_in_each_layer(tmp_path):
  # The rules must be able to fail: a copy of the tree with forbidden imports in each package.
  for package in RULES:
    shutil.copytree(REPO / package, tmp_path / package,
                    ignore=shutil.ignore_patterns("__pycache__"))
  planted = {
      "tea_jax/model/planted.py": "def f():\n  import data_prep\n",
      "tea_jax/planted_apps.py": "from tea_apps import predict\n",
      "tea_jax/losses_planted.py": "import torch\n",
      "tea_jax/lazy_planted.py": "def f():\n  import transformers\n",
      "data_prep/planted.py": "from tea_jax.model.tea import TEA\n",
      "data_prep/planted2.py": "from tea_jax import files, train\n",
      "data_prep/planted3.py": "def f():\n  from tea_apps import demo\n",
      "tea_apps/planted.py": "import torch\n",
      "tea_apps/planted2.py": "from bench import train_step\n",
  }
  for rel, text in planted.items():
    (tmp_path / rel).write_text(text)
  found = violations(tmp_path)
  for rel in planted:
    assert any(f.startswith(rel + ":") for f in found), rel
  assert "data_prep/planted2.py: the offline side imports tea_jax.train" in " ".join(found)
  assert len(found) == len(planted)
