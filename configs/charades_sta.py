"""Charades-STA (Gao et al. 2017) with EMB's annotation copies.

Expects under data.root: charades_sta_{train,test}.txt, charades.json (durations), features/,
glove.840B.300d.txt, narratives.jsonl. Charades-STA has no validation split: the best checkpoint is
selected on test, as EMB did; numbers selected this way are optimistic, say so when reporting them.
"""

from configs import common


def get_config(variant=None):
  return common.dataset_config(
      variant, root="data/charades_sta",
      splits={"train": "charades_sta_train.txt", "test": "charades_sta_test.txt"},
      train="train", selection="test", evaluate=("test",), durations="charades.json")
