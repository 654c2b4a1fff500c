"""Charades-CD (Yuan et al. 2021): the TEA paper's main Charades benchmark.

    python -m tea_jax.main --config configs/charades_cd.py[:variant] --config.data.root=DIR ...

variant: tea (default), emb, vn, pq, vn_add, vn_attention (configs/common.py). Expects under
data.root: charades_{train,val,test_iid,test_ood}.json, features/ (I3D .npy per video),
glove.840B.300d.txt and narratives.jsonl. The best checkpoint is selected on val.
"""

from configs import common


def get_config(variant=None):
  return common.dataset_config(
      variant, root="data/charades_cd",
      splits={"train": "charades_train.json", "val": "charades_val.json",
              "test_iid": "charades_test_iid.json", "test_ood": "charades_test_ood.json"},
      train="train", selection="val", evaluate=("val", "test_iid", "test_ood"))
