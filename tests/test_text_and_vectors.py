"""Tokeniser, vocabulary, GloVe reader, features, narratives alignment and labels."""

import codecs
import json

import h5py
import numpy as np
import pytest

from data_prep import glove
from data_prep.features import FeatureSource, MissingFeatures, reduce_snippets
from data_prep.labels import moment_labels
from data_prep.narratives import MeanWordVectorEncoder, align_to_snippets, read_narratives
from data_prep.text import PAD, UNK, build_vocabulary, tokenize, word_ids


def test_tokenize_like_nltk_word_tokenize():
  # Expected tokens are nltk's Treebank rules, worked out by hand.
  assert tokenize(" The girl dances, then sits.") == ["the", "girl", "dances", ",", "then",
                                                      "sits", "."]
  assert tokenize("He's talking while they don't.") == ["he", "'s", "talking", "while", "they",
                                                         "do", "n't", "."]
  assert tokenize("person turn a light on.") == ["person", "turn", "a", "light", "on", "."]


def test_tokenize_splits_sentences_with_punkt_like_emb():
  # Real ActivityNet queries; expected: EMB's word_tokenize (nltk 3.5 with the punkt model). Punkt
  # ends a sentence at "?" or "!", so the closing quote opens the next one and becomes ``.
  assert tokenize(' A mop bucket is shown with the caption "look familiar?".') == [
      "a", "mop", "bucket", "is", "shown", "with", "the", "caption", "``", "look", "familiar",
      "?", "``", "."]
  assert tokenize(' The man stops. Then he smiles.') == ["the", "man", "stops", ".", "then", "he",
                                                         "smiles", "."]
  # "st." and "dr." are abbreviations of the English model: no sentence ends there.
  assert tokenize("They walk down st. james street.") == ["they", "walk", "down", "st.", "james",
                                                          "street", "."]


def test_vocabulary_order_ties_and_filter():
  train = [["a", "b", "c"], ["b", "x"]]
  test = [["d", "a", "b"]]
  known = {"a", "b", "c", "d"}
  vocab = build_vocabulary(train + test, known)
  # Counts: b 3, a 2, then c, x, d once each in first-seen order; x has no vector.
  assert vocab == [PAD, UNK, "b", "a", "c", "d"]
  index = {w: i for i, w in enumerate(vocab)}
  assert word_ids(["d", "zzz", "a", "b"], index, 3) == [5, 1, 3]


def write_glove(path, rows):
  path.write_text("".join(" ".join([w] + [str(x) for x in v]) + "\n" for w, v in rows))


def test_glove_reader_skips_malformed_keeps_last_and_caches(tmp_path, monkeypatch):
  path = tmp_path / "glove.txt"
  write_glove(path, [("cat", [1, 2, 3]), ("at home", [0, 0, 0]), ("dog", [4, 5, 6]),
                     ("cat", [7, 8, 9]), ("unused", [0, 1, 0]), ("short", [1, 2])])
  index, vectors, stats = glove.read_vectors(str(path), ["dog", "cat", "bird"], dim=3,
                                             cache_dir=str(tmp_path / "cache"), progress=False)
  assert list(index) == ["dog", "cat"]
  np.testing.assert_array_equal(vectors, [[4, 5, 6], [7, 8, 9]])
  assert stats["malformed"] == 2 and stats["repeated"] == 1 and stats["found"] == 2

  def no_scan(*a, **k):
    raise AssertionError("the cache should have been used")

  monkeypatch.setattr(glove, "tqdm", no_scan)
  index2, vectors2, _ = glove.read_vectors(str(path), ["dog", "cat", "bird"], dim=3,
                                           cache_dir=str(tmp_path / "cache"), progress=False)
  assert index2 == index
  np.testing.assert_array_equal(vectors2, vectors)
  with pytest.raises(FileNotFoundError, match="nope.txt"):
    glove.read_vectors(str(tmp_path / "nope.txt"), ["cat"], dim=3)


def emb_glove(path, dim):
  """EMB's load_glove + filter_glove_embedding (util/data_gen.py), transcribed: {word: vector} of
  the lines codecs.open yields that have dim + 1 fields after strip(); the last one wins."""
  vectors = {}
  with codecs.open(str(path), mode="r", encoding="utf-8") as f:
    for line in f:
      fields = line.lstrip().rstrip().split(" ")
      if len(fields) == dim + 1:
        vectors[fields[0]] = np.asarray([float(x) for x in fields[1:]], np.float32)
  return vectors


def test_glove_lines_are_read_as_emb_reads_them(tmp_path):
  path = tmp_path / "glove.txt"
  path.write_bytes("\n".join([
      "cat 1 2 3",
      "ab\u2028cd 4 5 6",       # a Python line break inside: "cd" gets (4, 5, 6)
      "\xa0dog 7 8 9",          # leading non-breaking space: stripped
      "x\x1cy 1 1 1",           # \x1c breaks the line too: "y" gets (1, 1, 1)
      "trail 2 2 2 ",           # trailing space: stripped
      "caf\u00e9 0.1 0.2 0.3",
      "0.333333343267 0.1 0.2 0.3",
      "two words 1 2 3",        # 5 fields: not a vector line
      "cat 3 2 1",              # repeated: the last one wins
  ]).encode("utf-8") + b"\r\n")
  reference = emb_glove(path, 3)
  wanted = sorted(reference) + ["ab", "two", "absent"]
  index, vectors, stats = glove.read_vectors(str(path), wanted, dim=3, progress=False)
  assert set(index) == set(reference) == {"cat", "cd", "dog", "y", "trail", "caf\u00e9",
                                           "0.333333343267"}
  for word, row in index.items():
    np.testing.assert_array_equal(vectors[row], reference[word])
  assert stats["repeated"] == 1 and stats["non_finite"] == 0


def test_non_finite_vectors_are_skipped_and_reported(tmp_path, caplog):
  path = tmp_path / "glove.txt"
  write_glove(path, [("cat", [1, 2, 3]), ("dog", ["nan", 0, 0]), ("eel", [0, "inf", 1]),
                     ("dog", [4, 5, 6]), ("fox", [1e39, 0, 0])])
  index, vectors, stats = glove.read_vectors(str(path), ["cat", "dog", "eel", "fox"], dim=3,
                                             progress=False)
  # dog's finite line (4) is kept; eel and fox (1e39 overflows float32) have none.
  assert list(index) == ["cat", "dog"] and np.all(np.isfinite(vectors))
  np.testing.assert_array_equal(vectors[index["dog"]], [4, 5, 6])
  assert stats["non_finite"] == 3
  assert stats["non_finite_vectors"] == ["glove.txt:2: dog", "glove.txt:3: eel", "glove.txt:5: fox"]
  assert "glove.txt:3" in caplog.text and "'eel'" in caplog.text


def test_reduce_snippets_mean_and_max():
  feats = np.arange(130 * 2, dtype=np.float32).reshape(130, 2)
  out = reduce_snippets(feats, 128, "mean")
  edges = np.minimum(np.round(np.arange(129) / 128 * 130).astype(int), 129)
  for i in (0, 1, 64, 127):
    lo, hi = edges[i], edges[i + 1]
    expected = feats[lo:hi].mean(0) if hi > lo else feats[lo]
    np.testing.assert_allclose(out[i], expected)
  # 129 <= T <= 191: the last bin is exactly row T - 1.
  np.testing.assert_array_equal(reduce_snippets(feats[:129], 128, "mean")[-1], feats[128])
  # T = 130: bin 1 is rows [1, 2); edges 127, 128 are 129, 129 (clipped): bin 127 is row 129.
  np.testing.assert_array_equal(reduce_snippets(feats, 128, "max")[1], feats[1])
  np.testing.assert_array_equal(reduce_snippets(feats, 128, "max")[127], feats[129])
  short = feats[:40]
  np.testing.assert_array_equal(reduce_snippets(short, 128), short)


def test_feature_sources_npy_and_hdf5(tmp_path):
  folder = tmp_path / "feats"
  folder.mkdir()
  np.save(folder / "v1.npy", np.ones((5, 4), np.float32))
  np.save(folder / "v2.npy", np.ones((3, 4), np.float32))
  (folder / "feature_shapes.json").write_text(json.dumps({"v1": 5, "v2": 7}))
  source = FeatureSource(str(folder))
  assert source.get("v1").shape == (5, 4)
  with pytest.raises(ValueError, match="v2.npy.*feature_shapes.json"):
    source.get("v2")
  with pytest.raises(MissingFeatures, match="v9"):
    source.get("v9")
  h5 = tmp_path / "feats.h5"
  with h5py.File(h5, "w") as f:
    f["v1"] = np.full((6, 4), 2.0, np.float32)
  source = FeatureSource(str(h5))
  np.testing.assert_array_equal(source.get("v1"), np.full((6, 4), 2.0))
  with pytest.raises(MissingFeatures, match="feats.h5"):
    source.get("v2")
  with pytest.raises(FileNotFoundError, match="nowhere"):
    FeatureSource(str(tmp_path / "nowhere"))


def test_corrupt_feature_files_give_one_line_naming_the_file(tmp_path):
  folder = tmp_path / "feats"
  folder.mkdir()
  np.save(folder / "ok.npy", np.ones((5, 4), np.float32))
  whole = (folder / "ok.npy").read_bytes()
  (folder / "empty.npy").write_bytes(b"")
  (folder / "cut.npy").write_bytes(whole[:-10])
  (folder / "text.npy").write_bytes(b"not a numpy file")
  np.save(folder / "words.npy", np.array([["a", "b"]]))
  source = FeatureSource(str(folder))
  for vid in ("empty", "cut", "text", "words"):
    with pytest.raises(ValueError, match=f"cannot read features .*{vid}.npy"):
      source.get(vid)
  bad_h5 = tmp_path / "bad.h5"
  bad_h5.write_bytes(b"not an hdf5 file" * 8)
  with pytest.raises(ValueError, match="cannot open features .*bad.h5"):
    FeatureSource(str(bad_h5))
  h5 = tmp_path / "strings.h5"
  with h5py.File(h5, "w") as f:
    f["v1"] = np.array([b"x", b"y"])
  with pytest.raises(ValueError, match="strings.h5:v1"):
    FeatureSource(str(h5)).get("v1")


def test_narratives_reader_and_alignment(tmp_path):
  path = tmp_path / "narratives.jsonl"
  path.write_text(
      json.dumps({"video_id": "v1", "interval": 1.0,
                  "narratives": [{"t": 2.0, "text": "b"}, {"t": 0.0, "text": "a"}]}) + "\n"
      + '{"video_id": "v2", "narr')  # a line cut short by a crash
  videos, problems = read_narratives(str(path))
  assert videos == {"v1": [(0.0, "a"), (2.0, "b")]}
  assert len(problems) == 1 and "narratives.jsonl:2" in problems[0]
  # 4 snippets over 8 s: [0,2) [2,4) [4,6) [6,8). Narratives at 0.5, 1.5 and 5.0 s.
  feats = np.array([[1.0, 0.0], [3.0, 0.0], [0.0, 5.0]], np.float32)
  aligned = align_to_snippets(np.array([0.5, 1.5, 5.0]), feats, 8.0, 4)
  np.testing.assert_allclose(aligned[0], [2.0, 0.0])  # mean of the two inside
  np.testing.assert_allclose(aligned[2], [0.0, 5.0])
  # Centre 3.0: the nearest is 1.5 (1.5 s away) rather than 5.0 (2 s).
  np.testing.assert_allclose(aligned[1], feats[1])
  np.testing.assert_allclose(aligned[3], feats[2])  # centre 7.0: nearest is 5.0
  encoder = MeanWordVectorEncoder({"a": 0, "dog": 1}, np.array([[1.0, 1.0], [3.0, 5.0]]))
  np.testing.assert_allclose(encoder.encode(["A dog.", "nothing known"]),
                             [[2.0, 3.0], [0.0, 0.0]])


def brute_labels(start, end, v_len, duration):
  best, best_iou = (0, 0), 0.0
  for i in range(v_len):
    for j in range(v_len):
      s = np.float32(i) / np.float32(v_len) * np.float32(duration)
      e = np.float32(j + 1) / np.float32(v_len) * np.float32(duration)
      inter = max(min(e, end) - max(s, start), 0.0)
      union = max(max(e, end) - min(s, start), 1e-5)
      if inter / union > best_iou:
        best, best_iou = (i, j), inter / union
  return best


def test_moment_labels_match_brute_force(rng):
  assert moment_labels(0.0, 6.9, 33, 33.67) == (0, 6)
  for _ in range(30):
    v_len = int(rng.integers(5, 40))
    duration = float(rng.uniform(10, 60))
    start = float(rng.uniform(0, duration))
    end = float(rng.uniform(start, duration))
    assert moment_labels(start, end, v_len, duration) == brute_labels(start, end, v_len, duration)
