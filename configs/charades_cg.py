"""Charades-CG (Li et al. CVPR 2022): novel-word and novel-composition test splits.

Expects under data.root: train.json, test_trivial.json, novel_word.json, novel_composition.json,
features/, glove.840B.300d.txt, narratives.jsonl. CG has no validation split: the best checkpoint
is selected on test_trivial (in distribution), never on the novel splits.
"""

from configs import common


def get_config(variant=None):
  return common.dataset_config(
      variant, root="data/charades_cg",
      splits={"train": "train.json", "test_trivial": "test_trivial.json",
              "novel_word": "novel_word.json", "novel_composition": "novel_composition.json"},
      train="train", selection="test_trivial",
      evaluate=("test_trivial", "novel_word", "novel_composition"))
