"""Records built from a small synthetic benchmark, read back through the tf.data pipeline."""

import json
import os

import numpy as np
import pytest
from conftest import REPO

from configs import demo
from data_prep import synthetic
from data_prep.build_records import BuildError, build_records
from data_prep.features import reduce_snippets
from tea_jax.data.input_pipeline import Records


def small_config(root, **data):
  config = demo.get_config()
  config.unlock()
  config.data.root = str(root)
  config.data.update(data)
  return config


@pytest.fixture(scope="module")
def built(tmp_path_factory):
  root = tmp_path_factory.mktemp("synthetic")
  counts = synthetic.generate(str(root), videos=30, seed=3, video_dim=256, word_dim=50)
  config = small_config(root)
  meta = build_records(config, progress=False)
  return root, config, meta, counts


def test_meta_counts_and_files(built):
  root, _, meta, counts = built
  for split, n in counts.items():
    assert meta["splits"][split]["pairs"] == n
  records = root / "records"
  assert {"meta.json", "features.json", "vocab.json", "word_vectors.npy"} <= set(os.listdir(records))
  vocab = json.loads((records / "vocab.json").read_text())
  assert vocab[:2] == ["<PAD>", "<UNK>"] and len(vocab) == meta["vocab_size"]
  assert np.load(records / "word_vectors.npy").shape == (meta["vocab_size"] - 2, 50)
  assert meta["word_vectors"]["malformed"] == 1  # the "at home" line of the synthetic GloVe


def test_one_record_per_video_with_all_its_queries(built):
  root, _, meta, counts = built
  import tensorflow as tf  # pylint: disable=import-outside-toplevel
  lines = (root / "charades_sta_test.txt").read_text().splitlines()
  videos = {line.split()[0] for line in lines if line.strip()}
  files = [str(root / "records" / name) for name in meta["splits"]["test"]["shards"]]
  assert sum(1 for _ in tf.data.TFRecordDataset(files)) == len(videos) < counts["test"]
  assert meta["splits"]["test"]["videos_written"] == len(videos)


def test_pairs_round_trip_the_sources(built):
  # Every pair read back carries its own query and its own video's features: the expansion of a
  # video record into pairs must not mix them up.
  root, config, meta, _ = built
  records = Records(str(root / "records"), config.data)
  lines = (root / "charades_sta_test.txt").read_text().splitlines()
  checked = 0
  for batch in records.eval_batches("test", 16):
    for i in np.nonzero(batch["valid"])[0]:
      vid = batch["video_id"][i]
      v_len = int(batch["video_mask"][i].sum())
      source = reduce_snippets(np.load(root / "features" / f"{vid}.npy"), 128)
      np.testing.assert_array_equal(batch["video"][i, :v_len], source)
      assert np.all(batch["video"][i, v_len:] == 0)
      line = lines[int(batch["pair_index"][i])]
      assert line.startswith(vid) and line.endswith(batch["query"][i])
      n_words = int(batch["query_mask"][i].sum())
      ids = batch["word_ids"][i]
      assert np.all(ids[:n_words] > 0) and np.all(ids[n_words:] == 0)
      assert 0 <= batch["start_label"][i] <= batch["end_label"][i] < v_len
      checked += 1
  assert checked == meta["splits"]["test"]["pairs"]


def test_records_of_another_format_are_refused(built, tmp_path):
  root, config, _, _ = built
  old = tmp_path / "old_records"
  old.mkdir()
  meta = json.loads((root / "records" / "meta.json").read_text())
  del meta["record_format"]
  (old / "meta.json").write_text(json.dumps(meta))
  with pytest.raises(ValueError, match="rebuild them"):
    Records(str(old), config.data)


def test_eval_batches_cover_every_example_once_in_order(built):
  root, config, meta, _ = built
  records = Records(str(root / "records"), config.data)
  n = meta["splits"]["test"]["pairs"]
  batches = list(records.eval_batches("test", 16))
  assert all(b["video"].shape == (16, records.length, 256) for b in batches)
  valid = np.concatenate([b["valid"] for b in batches])
  assert valid.sum() == n and np.all(valid[:n] == 1) and np.all(valid[n:] == 0)
  order = np.concatenate([b["pair_index"] for b in batches])[:n]
  assert sorted(order.tolist()) == list(range(n))


def test_train_batches_are_deterministic_and_resume_mid_stream(built):
  root, config, _, _ = built
  records = Records(str(root / "records"), config.data)
  first = records.train_batches("train", 8, seed=5)
  stream = [next(first)["pair_index"] for _ in range(12)]
  again = records.train_batches("train", 8, seed=5)
  np.testing.assert_array_equal(next(again)["pair_index"], stream[0])
  resumed = records.train_batches("train", 8, seed=5, start_step=7)
  np.testing.assert_array_equal(next(resumed)["pair_index"], stream[7])
  other = records.train_batches("train", 8, seed=6)
  assert not np.array_equal(next(other)["pair_index"], stream[0])
  # One epoch of the stream visits every training example exactly once.
  n = records.size("train")
  assert 12 * 8 >= n  # the stream above spans at least one epoch
  seen = np.concatenate(stream)[:n]
  assert sorted(seen.tolist()) == list(range(n))


def test_failed_build_keeps_the_previous_records(built, tmp_path):
  root, config, _, _ = built
  before = sorted(os.listdir(root / "records"))
  broken = small_config(root, features="no_such_features")
  with pytest.raises(FileNotFoundError, match="no_such_features"):
    build_records(broken, progress=False)
  assert sorted(os.listdir(root / "records")) == before
  assert not [p for p in os.listdir(root) if p.startswith(".tmp-")]


def test_missing_video_features_are_reported_and_skipped(built, tmp_path):
  root, _, _, counts = built
  copy = tmp_path / "copy"
  synthetic.generate(str(copy), videos=30, seed=3, video_dim=256, word_dim=50)
  victim = (copy / "charades_sta_test.txt").read_text().split()[0]
  os.remove(copy / "features" / f"{victim}.npy")
  meta = build_records(small_config(copy), progress=False)
  assert victim in meta["missing_videos"]
  assert meta["splits"]["test"]["skipped"] > 0
  assert meta["splits"]["test"]["pairs"] + meta["splits"]["test"]["skipped"] == counts["test"]
  with pytest.raises(BuildError, match=victim):
    build_records(small_config(copy, strict=True), progress=False)


def test_build_records_command_line(tmp_path):
  import subprocess
  import sys
  synthetic.generate(str(tmp_path), videos=12, seed=4, video_dim=256, word_dim=50)
  proc = subprocess.run([sys.executable, "-m", "data_prep.build_records", "--config",
                         "configs/demo.py", f"--config.data.root={tmp_path}"], cwd=REPO,
                        capture_output=True, text=True, check=False)
  assert proc.returncode == 0, proc.stderr[-2000:]
  summary = json.loads(proc.stdout[proc.stdout.index("{"):])
  assert summary["pairs"]["train"] > 0 and summary["missing_videos"] == 0
  assert (tmp_path / "records" / "meta.json").exists()
  bad = subprocess.run([sys.executable, "-m", "data_prep.build_records", "--config",
                        "configs/demo.py", f"--config.data.root={tmp_path / 'nowhere'}"],
                       cwd=REPO, capture_output=True, text=True, check=False)
  assert bad.returncode != 0 and "not found" in bad.stderr and "Traceback" not in bad.stderr
