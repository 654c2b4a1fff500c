"""Imports run one way (docs/design.md section 15): the library never reaches the offline side, the
offline side uses only the library's data contract and utilities, torch stays out of the library."""

import ast
import pathlib
import shutil

from conftest import REPO

# Modules of tea_jax that are apps (they may use data_prep) or the command entry points of apps.
APPS = ("tea_jax/apps/", "tea_jax/demo.py", "tea_jax/predict.py", "tea_jax/import_emb.py")
# What data_prep may import from the library.
DATA_PREP_MAY_USE = ("tea_jax.data", "tea_jax.errors", "tea_jax.files", "tea_jax.cli",
                     "tea_jax.i3d")
# Packages the library may import lazily (inside a function, for an importer) but never at the
# top of a module.
LAZY_ONLY = ("torch", "transformers")


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


def _is(name: str, package: str) -> bool:
  return name == package or name.startswith(package + ".")


def violations(root: pathlib.Path) -> list[str]:
  """Every import that breaks the rules, as 'file: reason'."""
  found = []
  for path in sorted(root.glob("tea_jax/**/*.py")):
    rel = path.relative_to(root).as_posix()
    if rel.startswith(APPS):
      continue
    for name, top in imports(path):
      if _is(name, "data_prep"):
        found.append(f"{rel}: the library imports the offline side ({name})")
      elif _is(name, "tea_jax.apps"):
        found.append(f"{rel}: the library imports an app ({name})")
      elif top and any(_is(name, lazy) for lazy in LAZY_ONLY):
        found.append(f"{rel}: imports {name} at module level (only inside an importer function)")
  for path in sorted(root.glob("data_prep/**/*.py")):
    rel = path.relative_to(root).as_posix()
    for name, _ in imports(path):
      if _is(name, "tea_jax") and not any(_is(name, ok) for ok in DATA_PREP_MAY_USE):
        found.append(f"{rel}: data_prep imports {name} (it may use {DATA_PREP_MAY_USE})")
  return found


def test_imports_run_one_way():
  assert violations(REPO) == []


def test_a_planted_import_is_caught(tmp_path):
  # The rule must be able to fail: a copy of the tree with one forbidden import in each place.
  for package in ("tea_jax", "data_prep"):
    shutil.copytree(REPO / package, tmp_path / package,
                    ignore=shutil.ignore_patterns("__pycache__"))
  (tmp_path / "tea_jax/model/planted.py").write_text("def f():\n  import data_prep\n")
  (tmp_path / "tea_jax/losses_planted.py").write_text("import torch\n")
  (tmp_path / "data_prep/planted.py").write_text("from tea_jax.model.tea import TEA\n")
  (tmp_path / "data_prep/planted2.py").write_text("from tea_jax import files, train\n")
  found = violations(tmp_path)
  assert any(f.startswith("tea_jax/model/planted.py: the library imports the offline side")
             for f in found)
  assert any(f.startswith("tea_jax/losses_planted.py: imports torch at module level")
             for f in found)
  assert any(f.startswith("data_prep/planted.py: data_prep imports tea_jax.model.tea")
             for f in found)
  assert "data_prep/planted2.py: data_prep imports tea_jax.train" in " ".join(found)
  assert len(found) == 4
