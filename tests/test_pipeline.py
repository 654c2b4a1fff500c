"""Records built from a small synthetic benchmark, read back through the tf.data pipeline."""

import collections
import json
import os

import numpy as np
import pytest
from conftest import REPO

from configs import demo
from data_prep import synthetic
from data_prep.build_records import build_records
from data_prep.features import reduce_snippets
from tea_jax.data.input_pipeline import Records
from tea_jax.data.schema import records_dir
from tea_jax.errors import InputError


def records_of(config):
  return records_dir(config.data)


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
  root, config, meta, counts = built
  for split, n in counts.items():
    assert meta["splits"][split]["pairs"] == n
  records = root / "records_max"  # the demo config is TEA's: max pooling
  assert records_of(config) == str(records)
  assert {"meta.json", "features.json", "vocab.json", "word_vectors.npy"} <= set(
      os.listdir(records))
  vocab = json.loads((records / "vocab.json").read_text())
  assert vocab[:2] == ["<PAD>", "<UNK>"] and len(vocab) == meta["vocab_size"]
  assert np.load(records / "word_vectors.npy").shape == (meta["vocab_size"] - 2, 50)
  assert meta["word_vectors"]["malformed"] == 1  # the "at home" line of the synthetic GloVe


def test_one_record_per_video_with_all_its_queries(built):
  root, config, meta, counts = built
  import tensorflow as tf  # pylint: disable=import-outside-toplevel
  lines = (root / "charades_sta_test.txt").read_text().splitlines()
  videos = {line.split()[0] for line in lines if line.strip()}
  files = [os.path.join(records_of(config), name) for name in meta["splits"]["test"]["shards"]]
  assert sum(1 for _ in tf.data.TFRecordDataset(files)) == len(videos) < counts["test"]
  assert meta["splits"]["test"]["videos_written"] == len(videos)


def test_pairs_round_trip_the_sources(built):
  # Every pair read back carries its own query and its own video's features: the expansion of a
  # video record into pairs must not mix them up.
  root, config, meta, _ = built
  records = Records(records_of(config), config.data)
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
  meta = json.loads(open(os.path.join(records_of(config), "meta.json")).read())
  del meta["record_format"]
  (old / "meta.json").write_text(json.dumps(meta))
  with pytest.raises(ValueError, match="rebuild them"):
    Records(str(old), config.data)


def test_eval_batches_cover_every_example_once_in_order(built):
  root, config, meta, _ = built
  records = Records(records_of(config), config.data)
  n = meta["splits"]["test"]["pairs"]
  batches = list(records.eval_batches("test", 16))
  assert all(b["video"].shape == (16, records.length, 256) for b in batches)
  valid = np.concatenate([b["valid"] for b in batches])
  assert valid.sum() == n and np.all(valid[:n] == 1) and np.all(valid[n:] == 0)
  order = np.concatenate([b["pair_index"] for b in batches])[:n]
  assert sorted(order.tolist()) == list(range(n))


def test_train_batches_are_deterministic_and_resume_mid_stream(built):
  root, config, _, _ = built
  records = Records(records_of(config), config.data)
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
  before = sorted(os.listdir(records_of(config)))
  broken = small_config(root, features="no_such_features")
  with pytest.raises(FileNotFoundError, match="no_such_features"):
    build_records(broken, progress=False)
  assert sorted(os.listdir(records_of(config))) == before
  assert not [p for p in os.listdir(root) if p.startswith(".tmp-")]


def test_missing_video_features_are_reported_and_skipped(built, tmp_path):
  root, _, _, counts = built
  copy = tmp_path / "copy"
  synthetic.generate(str(copy), videos=30, seed=3, video_dim=256, word_dim=50)
  victim = (copy / "charades_sta_test.txt").read_text().split()[0]
  os.remove(copy / "features" / f"{victim}.npy")
  # An evaluation split's pairs are all counted unless asked otherwise: one line naming them.
  with pytest.raises(InputError, match=rf"test: 1 without features \({victim}\) of its \d+ "
                                       r"videos; their \d+ pairs would not be evaluated"):
    build_records(small_config(copy), progress=False)
  meta = build_records(small_config(copy, missing="skip"), progress=False)
  assert victim in meta["missing_videos"]
  assert meta["splits"]["test"]["skipped"] > 0
  assert meta["splits"]["test"]["pairs"] + meta["splits"]["test"]["skipped"] == counts["test"]
  with pytest.raises(InputError, match=victim):
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
  assert (tmp_path / "records_max" / "meta.json").exists()
  bad = subprocess.run([sys.executable, "-m", "data_prep.build_records", "--config",
                        "configs/demo.py", f"--config.data.root={tmp_path / 'nowhere'}"],
                       cwd=REPO, capture_output=True, text=True, check=False)
  assert bad.returncode != 0 and "not found" in bad.stderr and "Traceback" not in bad.stderr


def emb_vocabulary_of(root, config) -> list[str]:
  """EMB's vocab_emb_gen on the synthetic files, transcribed: the splits in declared order, every
  line counted, most_common, words of the GloVe lines with word_dim + 1 fields."""
  from data_prep.text import tokenize  # pylint: disable=import-outside-toplevel
  dim = config.model.word_dim
  known = {line.strip().split(" ")[0] for line in open(root / "glove.txt", encoding="utf-8")
           if len(line.strip().split(" ")) == dim + 1}
  counter = collections.Counter()
  for name in ["charades_sta_train.txt", "charades_sta_val.txt", "charades_sta_test.txt",
               "charades_sta_test_ood.txt", "charades_sta_novel_word.txt",
               "charades_sta_novel_composition.txt"]:
    for line in open(root / name, encoding="utf-8"):
      if line.strip():
        counter.update(tokenize(line.strip().split("##")[1]))
  return ["<PAD>", "<UNK>"] + [w for w, _ in counter.most_common() if w in known]


def test_vocab_json_is_emb_vocabulary_in_declared_split_order(built):
  root, config, meta, _ = built
  assert meta["split_order"] == ["train", "val", "test", "test_ood", "novel_word",
                                 "novel_composition"]
  vocab = json.loads(open(os.path.join(records_of(config), "vocab.json")).read())
  assert vocab == emb_vocabulary_of(root, config)


def add_bad_lines(root) -> str:
  """Appends a start > end line and a moment past its video's end to the test split; returns the
  video they are on."""
  first = (root / "charades_sta_test.txt").read_text().splitlines()[0]
  vid = first.split()[0]
  duration = json.loads((root / "charades.json").read_text())[vid]["duration"]
  with open(root / "charades_sta_test.txt", "a", encoding="utf-8") as f:
    f.write(f"{vid} 8.0 3.0##person opens the door.\n")
    f.write(f"{vid} {duration + 1.0} {duration + 5.0}##person closes the door.\n")
  return vid


def test_reference_records_keep_what_emb_keeps(tmp_path):
  counts = synthetic.generate(str(tmp_path), videos=12, seed=5, video_dim=256, word_dim=50)
  add_bad_lines(tmp_path)
  meta = build_records(small_config(tmp_path), progress=False)
  test = meta["splits"]["test"]
  assert test["pairs"] == counts["test"] + 2 and test["kept_bad_records"] == 2
  assert [b["source"] for b in test["bad_records"]] == [
      f"charades_sta_test.txt:{counts['test'] + 1}", f"charades_sta_test.txt:{counts['test'] + 2}"]
  assert meta["bad_records"] == {"policy": "reference", "kept": 2, "skipped": 0}
  records = Records(records_of(small_config(tmp_path)), small_config(tmp_path).data)
  seen = {}
  for batch in records.eval_batches("test", 8):
    for i in np.nonzero(batch["valid"])[0]:
      seen[int(batch["pair_index"][i])] = (batch["start_label"][i], batch["end_label"][i],
                                           batch["start_time"][i], batch["end_time"][i])
  inverted, past_end = seen[counts["test"]], seen[counts["test"] + 1]
  # EMB's labels of a moment no span overlaps: (0, 0); the times as EMB clips them.
  assert inverted[:2] == (0, 0) and past_end[:2] == (0, 0)
  assert inverted[2:] == (8.0, 3.0) and past_end[2] > past_end[3]
  skipped = build_records(small_config(tmp_path, bad_records="skip"), progress=False)
  assert skipped["splits"]["test"]["pairs"] == counts["test"]
  assert skipped["bad_records"] == {"policy": "skip", "kept": 0, "skipped": 2}
  with pytest.raises(InputError, match="charades_sta_test.txt"):
    build_records(small_config(tmp_path, bad_records="fail"), progress=False)
  with pytest.raises(InputError, match="charades_sta_test.txt"):
    build_records(small_config(tmp_path, strict=True), progress=False)


def test_pooling_picks_its_own_records_folder(tmp_path):
  from configs import charades_cd  # pylint: disable=import-outside-toplevel
  tea, emb = charades_cd.get_config("tea"), charades_cd.get_config("emb")
  assert (tea.data.pooling, tea.data.records_dir) == ("max", "records_max")
  assert (emb.data.pooling, emb.data.records_dir) == ("mean", "records_mean")
  emb.unlock()
  emb.data.pooling = "max"  # an override moves the folder with it
  assert emb.data.records_dir == "records_max"
  # Long videos: the two poolings give two record sets, each in its own folder.
  synthetic.generate(str(tmp_path), videos=8, seed=6, video_dim=256, word_dim=50,
                     seconds=(150, 160))
  for pooling in ("max", "mean"):
    config = small_config(tmp_path, pooling=pooling)
    meta = build_records(config, progress=False)
    assert records_of(config).endswith(f"records_{pooling}") and meta["pooling"] == pooling
    records = Records(records_of(config), config.data)
    batch = next(records.eval_batches("test", 4))
    vid = batch["video_id"][0]
    expected = reduce_snippets(np.load(tmp_path / "features" / f"{vid}.npy"), 128, pooling)
    np.testing.assert_array_equal(batch["video"][0, :128], expected)
