"""Every Python name, module, command and file that the README, the docs or a docstring promises
exists: `tea_jax.import_emb.load`, `python -m tea_apps.predict`, `tea_jax/model/tea.py`, and the
names the README's Python snippets import and call."""

import ast
import importlib
import importlib.util
import pathlib
import re

import pytest
from conftest import REPO

PACKAGES = ("tea_jax", "data_prep", "tea_apps", "configs", "bench")
DOTTED = re.compile(r"(?<![\w./-])((?:tea_jax|data_prep|tea_apps|configs)(?:\.[A-Za-z_]\w*)+)")
PATH = re.compile(r"(?<![\w./-])((?:tea_jax|data_prep|tea_apps|configs|bench|tests|docs)"
                  r"/[\w./-]*\w\.(?:py|md|sh|png|txt))")
MODULE_RUN = re.compile(r"python3? -m ([\w.]+)")
PYTHON_BLOCK = re.compile(r"```python\n(.*?)```", re.S)


def documents() -> dict[str, str]:
  """The README, the docs, and every docstring of the three packages, by where they come from."""
  texts = {"README.md": (REPO / "README.md").read_text(encoding="utf-8")}
  for path in sorted((REPO / "docs").glob("*.md")):
    texts[path.relative_to(REPO).as_posix()] = path.read_text(encoding="utf-8")
  for package in ("tea_jax", "data_prep", "tea_apps", "configs"):
    for path in sorted((REPO / package).glob("**/*.py")):
      tree = ast.parse(path.read_text(encoding="utf-8"))
      nodes = [tree] + [n for n in ast.walk(tree) if isinstance(
          n, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef))]
      docs = [ast.get_docstring(n) for n in nodes]
      texts[path.relative_to(REPO).as_posix()] = "\n".join(d for d in docs if d)
  return texts


def resolves(dotted: str) -> bool:
  """Whether `a.b.c` is a module, or an attribute chain of the longest importable module."""
  parts = dotted.rstrip(".").split(".")
  for cut in range(len(parts), 0, -1):
    name = ".".join(parts[:cut])
    try:
      if importlib.util.find_spec(name) is None:
        continue
    except ModuleNotFoundError:
      continue
    node = importlib.import_module(name)
    for attribute in parts[cut:]:
      if not hasattr(node, attribute):
        return False
      node = getattr(node, attribute)
    return True
  return False


def runnable(module: str) -> bool:
  """Whether `python -m module` runs something: the module exists and has a __main__ block."""
  spec = importlib.util.find_spec(module)
  if spec is None or not spec.origin:
    return False
  return 'if __name__ == "__main__":' in pathlib.Path(spec.origin).read_text(encoding="utf-8")


def promises() -> list[tuple[str, str, str]]:
  """(source, kind, what) of every promise found."""
  found = []
  for source, text in documents().items():
    found += [(source, "name", m) for m in DOTTED.findall(text)]
    found += [(source, "file", m) for m in PATH.findall(text)]
    found += [(source, "module", m) for m in MODULE_RUN.findall(text)]
  return sorted(set(found))


def test_the_scan_finds_the_promises_it_must_check():
  # The scan itself can fail: it must see these, which the README and docstrings do promise.
  found = {(kind, what) for _, kind, what in promises()}
  assert {("name", "tea_jax.import_emb.load"), ("module", "tea_apps.predict"),
          ("module", "tea_jax.main"), ("file", "docs/design.md")} <= found
  assert not resolves("tea_jax.import_emb.no_such_name")
  assert not runnable("tea_jax.model.tea")  # a module without a __main__ block
  assert not resolves("tea_jax.no_such_module")


def test_every_promised_name_module_and_file_exists():
  broken = []
  for source, kind, what in promises():
    if kind == "file":
      ok = (REPO / what).exists()
    elif kind == "module":
      ok = not what.startswith(PACKAGES) or runnable(what)
    else:
      ok = resolves(what)
    if not ok:
      broken.append(f"{source}: {kind} {what}")
  assert broken == []


@pytest.mark.parametrize("document", ["README.md"] + [
    p.relative_to(REPO).as_posix() for p in sorted((REPO / "docs").glob("*.md"))])
def test_python_snippets_import_and_call_what_exists(document):
  text = (REPO / document).read_text(encoding="utf-8")
  for block in PYTHON_BLOCK.findall(text):
    tree = ast.parse(block)
    bound = {}
    for node in ast.walk(tree):
      if isinstance(node, ast.ImportFrom) and node.module:
        for alias in node.names:
          target = f"{node.module}.{alias.name}"
          assert resolves(target), f"{document}: {target}"
          bound[alias.asname or alias.name] = target
      elif isinstance(node, ast.Import):
        for alias in node.names:
          assert resolves(alias.name), f"{document}: {alias.name}"
          bound[alias.asname or alias.name.split(".")[0]] = alias.name.split(".")[0]
    for node in ast.walk(tree):
      if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) \
          and node.value.id in bound and bound[node.value.id].startswith(PACKAGES):
        target = f"{bound[node.value.id]}.{node.attr}"
        assert resolves(target), f"{document}: {target}"
