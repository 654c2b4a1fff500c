"""The bundled demo: a small synthetic benchmark in the real formats (data_prep.synthetic), trained
end to end on the CPU in a few minutes. `make demo` runs it for EMB (baseline) and TEA.

    python -m tea_jax.main --config configs/demo.py --workdir runs/demo_tea
    python -m tea_jax.main --config configs/demo.py --config.model.merge=none \\
        --config.model.paragraph_branch=False --workdir runs/demo_emb
"""

from configs import common


def get_config(variant=None):
  c = common.base_config()
  c.data = common.data_config(
      root="demo_data",
      splits={"train": "charades_sta_train.txt", "val": "charades_sta_val.txt",
              "test": "charades_sta_test.txt",
              "test_ood": "charades_sta_test_ood.txt", "novel_word": "charades_sta_novel_word.txt",
              "novel_composition": "charades_sta_novel_composition.txt"},
      train="train", selection="val",
      evaluate=("test", "test_ood", "novel_word", "novel_composition"))
  c.data.durations = "charades.json"
  c.data.word_vectors = "glove.txt"
  c.data.num_shards = 2
  # The synthetic world's sizes (data_prep.synthetic defaults).
  c.model.video_dim = 256
  c.model.word_dim = 50
  c.model.narrative_dim = 50
  # A smaller model than the paper's so that the demo trains in minutes on 2 CPU cores.
  c.model.hidden = 64
  c.model.num_heads = 4
  common.apply_variant(c, variant)
  c.num_epochs = 20
  c.batch_size = 16
  c.log_every_steps = 20
  # Synthetic generator settings (python -m data_prep.synthetic).
  c.synthetic_videos = 260
  c.lock()
  return c
