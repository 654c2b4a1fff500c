"""ActivityNet-CD (Yuan et al. 2021).

Expects under data.root: anet_train.json (the shared copy is anet_train_reconstructed.json: set
--config.data.splits.train=anet_train_reconstructed.json), anet_val.json, anet_test_iid.json,
anet_test_ood.json, features/, glove.840B.300d.txt, narratives.jsonl. Selection on val.
"""

from configs import common


def get_config(variant=None):
  return common.dataset_config(
      variant, root="data/activitynet_cd",
      splits={"train": "anet_train.json", "val": "anet_val.json",
              "test_iid": "anet_test_iid.json", "test_ood": "anet_test_ood.json"},
      train="train", selection="val", evaluate=("val", "test_iid", "test_ood"))
