"""Configs: every dataset and variant loads, every field is commented, overrides are checked."""

import importlib
import re
import subprocess
import sys

import pytest
from conftest import REPO

DATASETS = ["charades", "charades_sta", "charades_cd", "charades_cg", "activitynet",
            "activitynet_cd", "activitynet_cg", "demo"]


@pytest.mark.parametrize("name", DATASETS)
def test_dataset_configs_load_and_are_locked(name):
  config = importlib.import_module(f"configs.{name}").get_config()
  assert config.data.train_split in config.data.splits
  assert config.data.selection_split in config.data.splits
  assert set(config.data.eval_splits) <= set(config.data.splits)
  assert config.model.merge == "concat" and config.model.paragraph_branch
  with pytest.raises(AttributeError):
    config.not_a_field = 1


@pytest.mark.parametrize("variant,merge,paragraph", [("emb", "none", False), ("vn", "concat", False),
                                                     ("pq", "none", True), ("tea", "concat", True),
                                                     ("vn_attention", "attention", True)])
def test_ablation_variants(variant, merge, paragraph):
  config = importlib.import_module("configs.charades_cd").get_config(variant)
  assert (config.model.merge, config.model.paragraph_branch) == (merge, paragraph)
  with pytest.raises(ValueError, match="unknown variant"):
    importlib.import_module("configs.charades_cd").get_config("nope")


def test_paper_defaults():
  config = importlib.import_module("configs.charades_cd").get_config()
  assert (config.batch_size, config.num_epochs, config.optimizer.learning_rate) == (16, 100, 5e-4)
  assert (config.model.hidden, config.model.num_heads, config.model.dropout) == (128, 8, 0.2)
  assert (config.loss.highlight_weight, config.loss.rank_weight, config.model.alpha) == (5.0, 1.0,
                                                                                         0.5)
  assert config.data.max_snippets == 128 and config.model.layer_norm_eps == 1e-6


@pytest.mark.parametrize("path", ["configs/common.py", "tea_jax/model/config.py",
                                  "tea_jax/losses.py"])
def test_every_config_field_has_a_comment_above_it(path):
  # ConfigDict fields (`c.x = ...`) and dataclass fields (`  x: int = ...`).
  field = r"^\s+((c|d)(\.\w+)+ = |\w+: [\w\[\], |]+ = )"
  lines = (REPO / path).read_text().splitlines()
  fields = [(i, line) for i, line in enumerate(lines) if re.match(field, line)]
  assert fields
  for i, line in fields:
    above = lines[i - 1].strip()
    assert above.startswith("#") or re.match(field, lines[i - 1]), f"{path}:{i + 1}: {line}"


def test_unknown_override_is_a_one_line_error(tmp_path):
  proc = subprocess.run([sys.executable, "-m", "tea_jax.main", "--config", "configs/demo.py",
                         "--config.batch_sise=32", "--workdir", str(tmp_path)], cwd=REPO,
                        capture_output=True, text=True, check=False)
  assert proc.returncode != 0
  assert "unknown config field" in proc.stderr and "batch_sise" in proc.stderr
  assert "Traceback" not in proc.stderr


def test_missing_records_is_a_one_line_error(tmp_path):
  proc = subprocess.run([sys.executable, "-m", "tea_jax.main", "--config", "configs/charades.py",
                         f"--config.data.root={tmp_path}", "--workdir", str(tmp_path / "run")],
                        cwd=REPO, capture_output=True, text=True, check=False)
  assert proc.returncode != 0
  assert "no meta.json" in proc.stderr and "build_records" in proc.stderr
  assert "Traceback" not in proc.stderr
