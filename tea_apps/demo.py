"""The bundled demo: synthetic benchmark -> records -> train -> eval, for EMB and for TEA (and the
train-free retriever, evaluated on the same records without training).

    python -m tea_apps.demo [--config configs/demo.py] [--workdir runs/demo] [--config.num_epochs=N]

Runs the same data_prep -> records -> train -> eval path as real data (configs/demo.py) twice: the
baseline (EMB: merge none, no paragraph branch) and TEA (the config's merge + paragraph branch),
evaluates the train-free retriever (variant trainfree) on TEA's records, then prints R1@0.5,
R1@0.7 and mIoU per split for each and writes them to <workdir>/results.json.
"""

import logging
import os

import ml_collections
from absl import flags
from ml_collections import config_flags

from data_prep import build_records, synthetic
from tea_jax import cli, files, train, trainfree
from tea_jax.config_checks import uses_narrative
from tea_jax.data.input_pipeline import load_meta
from tea_jax.data.schema import records_dir
from tea_jax.errors import ConfigError, InputError

log = logging.getLogger(__name__)


def prepare_data(config: ml_collections.ConfigDict) -> None:
  """Writes the synthetic benchmark (config.synthetic_videos videos) and its records when they are
  missing or were written by an older record format."""
  videos = config.get("synthetic_videos", 0)
  if not videos:
    raise ConfigError("the demo needs a config with synthetic_videos (configs/demo.py)")
  data = config.data
  first_split = os.path.join(data.root, next(iter(data.splits.values())))
  if not os.path.isfile(first_split):
    log.info("writing the synthetic benchmark to %s", data.root)
    synthetic.generate(data.root, videos=videos, seed=config.seed,
                       video_dim=config.model.video_dim, word_dim=config.model.word_dim)
  try:
    load_meta(records_dir(data))
  except (FileNotFoundError, InputError):  # missing, or of a record format this reader refuses
    log.info("building records in %s", records_dir(data))
    build_records.build_records(config, progress=False)


def variants(config: ml_collections.ConfigDict) -> dict[str, ml_collections.ConfigDict]:
  """EMB (no narratives) and TEA (the config's narrative settings), same everything else; and the
  train-free retriever on TEA's records (nothing to train: it is evaluated in seconds)."""
  emb = ml_collections.ConfigDict(config.to_dict())
  emb.model.merge, emb.model.paragraph_branch = "none", False
  if "variant" in emb:
    emb.variant = "emb"
  out = {"EMB": emb, "TEA": ml_collections.ConfigDict(config.to_dict())}
  if "trainfree" in config and uses_narrative(config.model):
    free = ml_collections.ConfigDict(config.to_dict())
    free.variant = trainfree.VARIANT
    out["Train-free"] = free
  return out


def results_table(results: dict[str, dict], splits: list[str]) -> str:
  """Markdown table: one row per split, R1@0.5 / R1@0.7 / mIoU for each model."""
  names = list(results)
  head = "| split | " + " | ".join(f"{n} R1@0.5 | {n} R1@0.7 | {n} mIoU" for n in names) + " |"
  rule = "|" + " --- |" * (1 + 3 * len(names))
  rows = [head, rule]
  for split in splits:
    cells = []
    for n in names:
      m = results[n][split]
      cells += [f"{m['r1@0.5']:.2f}", f"{m['r1@0.7']:.2f}", f"{m['miou']:.2f}"]
    rows.append(f"| {split} | " + " | ".join(cells) + " |")
  return "\n".join(rows)


def run(config: ml_collections.ConfigDict, workdir: str) -> dict:
  prepare_data(config)
  results = {}
  for name, variant in variants(config).items():
    log.info("training %s", name)
    out = train.train_and_evaluate(variant, os.path.join(workdir, name.lower()))
    if "metrics" not in out:
      raise ConfigError(f"{name} stopped at step {out['step']} before the end of its training "
                        f"(config.max_steps={config.get('max_steps')}): the demo needs every run "
                        f"finished")
    results[name] = out["metrics"]
  table = results_table(results, list(config.data.eval_splits))
  files.write_json(os.path.join(workdir, "results.json"), {
      "results": results, "table": table,
      "note": f"best checkpoint selected on '{config.data.selection_split}'"})
  return {"results": results, "table": table}


def main(argv):
  del argv
  cli.setup_logging()
  if flags.FLAGS.prepare_only:
    cli.run_reporting(lambda: prepare_data(flags.FLAGS.config))
    print(f"synthetic benchmark and records in {flags.FLAGS.config.data.root}")
    return
  out = cli.run_reporting(lambda: run(flags.FLAGS.config, flags.FLAGS.workdir))
  print(f"\nDemo results (synthetic benchmark; best checkpoint selected on "
        f"'{flags.FLAGS.config.data.selection_split}'):\n")
  print(out["table"])


def run_cli():
  """`python -m tea_apps.demo`: flags are defined here, not at import, so that importing this module
  never clashes with tea_jax.main's flags."""
  config_flags.DEFINE_config_file("config", "configs/demo.py", "Demo config.", lock_config=True)
  flags.DEFINE_string("workdir", "runs/demo", "Where the runs are written.")
  flags.DEFINE_bool("prepare_only", False, "Only write the synthetic data and its records (then "
                    "`python -m tea_jax.main --config configs/demo.py` trains one model on them).")
  cli.run_app(main, __doc__, __file__)


if __name__ == "__main__":
  run_cli()
