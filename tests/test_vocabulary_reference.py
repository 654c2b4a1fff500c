"""The vocabulary build_records makes equals EMB's vocab_emb_gen's, id for id, on the real
annotation files of every benchmark (../shared) with a generated GloVe file."""

import codecs
import collections
import functools
import importlib
import json

import numpy as np
import pytest
from conftest import shared_path

from data_prep import build_records as br
from data_prep import text
from tea_jax import config_checks
from tea_jax.errors import ConfigError

# Benchmark config -> (folder under shared/data/annotations, splits in EMB's order: train, val,
# test). EMB's own processors exist for Charades-STA and ActivityNet Captions; the CD and CG
# processors follow the same rule over the splits as the papers list them.
BENCHMARKS = {
    "charades_sta": ("charades_sta", ["charades_sta_train.txt", "charades_sta_test.txt"]),
    "charades_cd": ("charades_cd", ["charades_train.json", "charades_val.json",
                                    "charades_test_iid.json", "charades_test_ood.json"]),
    "charades_cg": ("charades_cg", ["train.json", "test_trivial.json", "novel_word.json",
                                    "novel_composition.json"]),
    "activitynet": ("activitynet_captions", ["train.json", "val_1.json", "val_2.json"]),
    "activitynet_cd": ("activitynet_cd", ["anet_train_reconstructed.json", "anet_val.json",
                                          "anet_test_iid.json", "anet_test_ood.json"]),
    "activitynet_cg": ("activitynet_cg", ["train.json", "test_trivial.json", "novel_word.json",
                                          "novel_composition.json"]),
}
DIM = 4


@functools.lru_cache(maxsize=None)
def cached_tokens(sentence: str) -> tuple[str, ...]:
  # The tokenizer is tested on its own (test_text_and_vectors); here both sides share it so that
  # ActivityNet's 70k queries are tokenised once.
  return tuple(text.tokenize(sentence))


def emb_sentences(folder, name: str) -> list[str]:
  """EMB's processors, transcribed: every record's sentence in file order (none is skipped)."""
  path = folder / name
  if name.endswith(".txt"):
    return [line.strip().split("##")[1] for line in open(path, encoding="utf-8") if line.strip()]
  return [sentence for item in json.load(open(path, encoding="utf-8")).values()
          for _, sentence in zip(item["timestamps"], item["sentences"])]


def emb_vocabulary(folder, names: list[str], glove_path) -> list[str]:
  """EMB's vocab_emb_gen, transcribed: count the words of the datasets in order, most_common,
  keep the words of the GloVe lines with DIM + 1 fields, [PAD, UNK] first."""
  with codecs.open(str(glove_path), mode="r", encoding="utf-8") as f:
    known = {line.lstrip().rstrip().split(" ")[0] for line in f
             if len(line.lstrip().rstrip().split(" ")) == DIM + 1}
  counter = collections.Counter()
  for name in names:
    for sentence in emb_sentences(folder, name):
      for word in cached_tokens(sentence):
        counter[word] += 1
  return ["<PAD>", "<UNK>"] + [w for w, _ in counter.most_common() if w in known]


def write_glove(path, folder, names: list[str]) -> None:
  """A GloVe file with about 80% of the benchmark's words, in a shuffled order, plus lines EMB
  skips (a phrase with spaces, a short line) and a repeated word."""
  words = sorted({w for name in names for s in emb_sentences(folder, name)
                  for w in cached_tokens(s)})
  rng = np.random.default_rng(len(words))
  chosen = [w for w in rng.permutation(words) if rng.random() < 0.8]
  lines = [" ".join([w] + [f"{x:.3f}" for x in rng.normal(size=DIM)]) for w in chosen]
  lines += ["a phrase " + " ".join(["0.5"] * DIM), "short 1.0", lines[0]]
  path.write_text("\n".join(lines) + "\n", encoding="utf-8")


@pytest.mark.parametrize("benchmark", sorted(BENCHMARKS))
def test_vocabulary_equals_emb_vocab_emb_gen(benchmark, tmp_path, monkeypatch):
  folder_name, emb_order = BENCHMARKS[benchmark]
  folder = shared_path("data", "annotations", folder_name)
  glove_path = tmp_path / "glove.txt"
  write_glove(glove_path, folder, emb_order)
  config = importlib.import_module(f"configs.{benchmark}").get_config()
  config.unlock()
  config.data.update(root=str(folder), word_vectors=str(glove_path), narratives="",
                     durations="charades.json" if benchmark == "charades_sta" else "")
  config.data.splits[config.data.train_split] = emb_order[0]  # the shared ActivityNet-CD train
  config.model.word_dim = DIM
  monkeypatch.setattr(br, "tokenize", lambda s: list(cached_tokens(s)))
  order = br.split_order(config.data)
  assert [config.data.splits[s] for s in order] == emb_order
  annotations, tokens = br.read_splits(config.data, order)
  vocab = br.make_vocabulary(config, tokens, order, {}, progress=False)
  expected = emb_vocabulary(folder, emb_order, glove_path)
  assert vocab.words == expected
  assert len(vocab.vectors) == len(expected) - 2
  # The order matters on every benchmark: counted in the order the ConfigDict stores the splits
  # (sorted by name), tied words come out in another order.
  by_name = [config.data.splits[s] for s in config.data.splits]
  assert by_name != emb_order and emb_vocabulary(folder, by_name, glove_path) != expected


def test_split_order_is_declared_train_first_and_checked():
  config = importlib.import_module("configs.charades_cg").get_config()
  assert list(config.data.splits) != list(config.data.split_order)  # the ConfigDict sorts
  assert br.split_order(config.data) == ["train", "test_trivial", "novel_word",
                                         "novel_composition"]
  config.unlock()
  config.data.split_order = ("novel_word", "train", "test_trivial", "novel_composition")
  assert br.split_order(config.data)[:2] == ["train", "novel_word"]
  config.data.split_order = ("train", "test_trivial")
  with pytest.raises(ConfigError, match="split_order"):
    config_checks.check_data(config.data)
