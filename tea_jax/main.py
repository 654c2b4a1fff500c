"""Command line: train and evaluate, or evaluate a checkpoint.

    python -m tea_jax.main --config configs/charades.py --workdir runs/charades \\
        [--config.batch_size=32]
    python -m tea_jax.main --config configs/charades.py --workdir runs/charades --mode eval \\
        [--step N]

Training resumes automatically from the latest checkpoint in --workdir. `--mode eval` restores the
best checkpoint (or --step) of --workdir, also one written by `python -m tea_jax.import_emb`, and
writes metrics.json and predictions_<split>.jsonl there. A `:trainfree` config (the train-free
retriever, tea_jax/trainfree.py) has nothing to train: either mode evaluates it. The records must
exist (data_prep.build_records; for configs/demo.py, `python -m tea_apps.demo --prepare_only`
writes the synthetic data and its records).
"""

import json
import os

from absl import flags
from ml_collections import config_flags

from tea_jax import cli

FLAGS = flags.FLAGS
config_flags.DEFINE_config_file("config", None, "Experiment config file (configs/*.py).",
                                lock_config=True)
flags.DEFINE_string("workdir", None, "Checkpoints, logs, metrics and predictions go here.")
flags.DEFINE_enum("mode", "train", ["train", "eval"], "Train (and evaluate) or only evaluate.")
flags.DEFINE_integer("step", None, "With --mode eval: the checkpoint step (default: the best).")
flags.mark_flags_as_required(["config", "workdir"])


def main(argv):
  del argv
  cli.setup_logging()
  from tea_jax import evaluate, train  # pylint: disable=import-outside-toplevel
  config = FLAGS.config
  if FLAGS.mode == "train":
    result = cli.run_reporting(lambda: train.train_and_evaluate(config, FLAGS.workdir))
    print(json.dumps(result.get("metrics", {"step": result["step"]}), indent=1))
  else:
    print(json.dumps(cli.run_reporting(
        lambda: evaluate.evaluate_checkpoint(config, FLAGS.workdir, FLAGS.step)), indent=1))
  print(f"outputs in {os.path.abspath(FLAGS.workdir)}")


def run():
  """Console entry point (`tea-jax`), the same as `python -m tea_jax.main`."""
  cli.run_app(main, __doc__, __file__)


if __name__ == "__main__":
  run()
