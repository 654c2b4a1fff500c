"""ActivityNet-Captions with EMB's splits: train, val_1 (validation), val_2 (the test set).

Expects under data.root: train.json, val_1.json, val_2.json, features/ (I3D .npy or .h5),
glove.840B.300d.txt, narratives.jsonl. The best checkpoint is selected on val_1 (EMB selected on
val_2, the test split).
"""

from configs import common


def get_config(variant=None):
  return common.dataset_config(
      variant, root="data/activitynet",
      splits={"train": "train.json", "val": "val_1.json", "test": "val_2.json"},
      train="train", selection="val", evaluate=("val", "test"))
