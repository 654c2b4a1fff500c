"""What a new user hit following the README, each reproduced as the command they ran: now a
working command, or one clear line naming what to change."""

import os
import re
import subprocess
import sys
import tomllib

import pytest
import tensorflow as tf
from conftest import REPO, tiny_train_config

from configs import demo
from data_prep import synthetic
from data_prep.build_records import build_records
from tea_jax import train
from tea_jax.data.input_pipeline import Records
from tea_jax.data.schema import records_dir
from tea_jax.errors import InputError

README = (REPO / "README.md").read_text(encoding="utf-8")


def command(*args, cwd=REPO, timeout=300):
  """`python -m args...` with the repository importable, as a user's shell runs it."""
  env = dict(os.environ, PYTHONPATH=str(REPO))
  return subprocess.run([sys.executable, "-m", *args], cwd=cwd, env=env, capture_output=True,
                        text=True, check=False, timeout=timeout)


def one_error_line(proc) -> str:
  """The command failed with exit status 2 and printed exactly one line on stderr."""
  lines = [line for line in proc.stderr.splitlines() if line.strip()]
  assert proc.returncode == 2, proc.stderr[-3000:]
  assert len(lines) == 1 and lines[0].startswith("error: "), proc.stderr[-3000:]
  return lines[0]


@pytest.mark.parametrize("module", ["tea_jax.main", "data_prep.build_records", "tea_apps.demo"])
def test_a_mistyped_config_path_is_one_line_naming_it(module, tmp_path):
  line = one_error_line(command(module, "--config", "configs/nope.py", "--workdir",
                                str(tmp_path / "run")))
  assert "--config configs/nope.py: no such file" in line
  assert str(REPO) in line  # the folder the relative path was read from


def test_outside_the_repository_the_line_says_where_the_configs_are(tmp_path):
  line = one_error_line(command("tea_jax.main", "--config", "configs/charades.py", "--workdir",
                                "run", cwd=tmp_path))
  assert str(tmp_path) in line and str(REPO / "configs") in line and "charades.py" in line


def test_an_unknown_variant_is_one_line():
  line = one_error_line(command("tea_jax.main", "--config", "configs/demo.py:bogus", "--workdir",
                                "runs/x"))
  assert "configs/demo.py:bogus" in line and "unknown variant 'bogus'" in line
  assert "'tea'" in line and "'emb'" in line  # the variants it may be


def test_a_mistyped_field_is_one_readable_line_with_the_suggestion():
  line = one_error_line(command("tea_jax.main", "--config", "configs/demo.py",
                                "--config.batch_sizee=32", "--workdir", "runs/x"))
  assert "unknown config field 'batch_sizee' in --config.batch_sizee=32" in line
  assert 'Did you mean "batch_size"' in line
  assert "\\" not in line  # no repr escapes


@pytest.mark.parametrize("module,flags", [
    ("tea_jax.main", ("--config", "--workdir", "--mode", "--step")),
    ("tea_jax.import_emb", ("--checkpoint", "--workdir", "--words", "--verbose")),
    ("tea_apps.demo", ("--config", "--workdir", "--prepare_only")),
    ("data_prep.build_records", ("--config",)),
])
def test_help_lists_the_commands_own_flags_also_as_a_console_script(module, flags):
  # An installed console script (tea-jax, ...) runs with sys.argv[0] naming the script.
  code = (f"import runpy, sys; sys.argv = ['/usr/local/bin/tea-command', '--help']; "
          f"runpy.run_module({module!r}, run_name='__main__')")
  proc = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True,
                        check=False, timeout=300, env=dict(os.environ, PYTHONPATH=str(REPO)))
  assert proc.returncode in (0, 1) and not proc.stderr.strip(), proc.stderr[-3000:]  # absl: 1
  for flag in flags:
    name = flag.removeprefix("--")
    assert re.search(rf"^\s+--(\[no\])?{name}\b", proc.stdout, re.M), (flag, proc.stdout)


def test_emb_records_build_without_narratives_and_a_tea_model_refuses_them(tmp_path):
  synthetic.generate(str(tmp_path), videos=12, seed=3, video_dim=32, word_dim=8)
  os.remove(tmp_path / "narratives.jsonl")
  config = demo.get_config("emb")
  config.unlock()
  config.data.root = str(tmp_path)
  config.model.update(video_dim=32, word_dim=8, narrative_dim=8)
  meta = build_records(config, progress=False)
  assert meta["narratives"] == {"read": False, "file": None, "zero_rows": {}}
  assert meta["missing_videos"] == {}
  annotated = sum(1 for name in config.data.splits.values()
                  for line in open(tmp_path / name, encoding="utf-8") if line.strip())
  assert sum(s["pairs"] for s in meta["splits"].values()) == annotated
  records = Records(records_dir(config.data), config.data)
  records.check_fits(config.model)  # EMB reads no narratives: fine
  config.model.update(merge="concat", paragraph_branch=True)
  with pytest.raises(InputError, match="hold no narratives.*reads them"):
    records.check_fits(config.model)


def test_a_run_that_ends_with_an_input_error_releases_its_lock(tmp_path, caplog):
  config = tiny_train_config(tmp_path / "no_data")
  workdir = tmp_path / "run"
  with pytest.raises(FileNotFoundError, match="build the records first"):
    train.train_and_evaluate(config, str(workdir), progress=False)
  assert (workdir / ".lock").read_text() == ""  # nothing left for the next run to take over
  with caplog.at_level("WARNING", logger="tea_jax"), pytest.raises(FileNotFoundError):
    train.train_and_evaluate(config, str(workdir), progress=False)
  assert "taking over the lock" not in caplog.text


def test_tensorboard_has_the_time_of_each_phase(train_data_root, tmp_path):
  workdir = tmp_path / "run"
  train.train_and_evaluate(tiny_train_config(train_data_root, num_epochs=1), str(workdir),
                           progress=False)
  tags = set()
  for path in (workdir / "tensorboard").rglob("events.out.tfevents*"):
    for event in tf.compat.v1.train.summary_iterator(str(path)):
      tags |= {value.tag for value in event.summary.value}
  assert {"time/input_s", "time/eval_s", "time/checkpoint_s", "train/loss",
          "steps_per_sec"} <= tags


def test_the_readme_names_the_sections_and_targets_others_point_at():
  headings = set(re.findall(r"^#+ (.+)$", README, re.M))
  for name in ("pyproject.toml", "requirements-cuda.txt"):
    for section in re.findall(r'README, "([^"]+)"', (REPO / name).read_text()):
      assert section in headings, (name, section)
  targets = set(re.findall(r"^([\w-]+):", (REPO / "Makefile").read_text(), re.M))
  assert {"demo", "test", "smoke", "bench"} <= targets
  for target in re.findall(r"`make (\w+)`", README):
    assert target in targets, target
  extras = tomllib.loads((REPO / "pyproject.toml").read_text())["project"][
      "optional-dependencies"]
  for extra in re.findall(r"`\[(\w+)\]`", README):
    assert extra in extras, extra


def test_the_readme_says_where_each_input_comes_from():
  section = README[README.index("## Where the inputs come from"):]
  section = section[:section.index("\n## ", 3)]
  for thing in ("glove.840B.300d", "rgb_charades.pt", "llava-hf/llava-1.5-13b-hf",
                "Salesforce/blip2", "charades_sta_train.txt", "Charades-CD", "ActivityNet-CG"):
    assert thing in section, thing
  assert "relative to the folder" in README  # where --config paths are read from


@pytest.mark.parametrize("script", sorted(p.name for p in (REPO / "bench").glob("*.py")
                                          if p.name != "__init__.py"))
def test_each_benchmarks_help_says_what_it_measures_in_full_sentences(script):
  proc = subprocess.run([sys.executable, str(REPO / "bench" / script), "--help"], cwd=REPO,
                        capture_output=True, text=True, check=False, timeout=300)
  assert proc.returncode == 0, proc.stderr[-2000:]
  description = proc.stdout.split("\n\n")[1]  # after the usage lines
  assert " ".join(description.split()).endswith("."), description
