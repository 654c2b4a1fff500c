"""Your own dataset, in the JSON-lines format of Moment-DETR, QVHighlights and Lighthouse.

    python -m data_prep.build_records --config configs/custom.py --config.data.root=my_data
    python -m tea_jax.main --config configs/custom.py --config.data.root=my_data --workdir runs/my

Expects under data.root: train.jsonl, val.jsonl, test.jsonl (one {"qid", "query", "vid",
"duration", "relevant_windows": [[start, end], ...]} per line; other keys are ignored; other
split names by overriding data.splits), features/ (one <vid>.npy per video, or an .h5 file),
the word vectors (glove.840B.300d.txt) and, for TEA models, narratives.jsonl (data_prep.narrate).
Training uses every window of a query as a pair; evaluation scores a prediction against the
window of its query it matches best and counts each query once. Selection on val.
"""

from configs import common


def get_config(variant=None):
  return common.dataset_config(
      variant, root="data/custom",
      splits={"train": "train.jsonl", "val": "val.jsonl", "test": "test.jsonl"},
      train="train", selection="val", evaluate=("val", "test"))
