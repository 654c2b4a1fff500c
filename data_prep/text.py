"""Tokenisation and the vocabulary of docs/design.md section 1.

Tokens are nltk's `word_tokenize` on the lower-cased, stripped sentence with `preserve_line=True`,
which needs no downloaded data (plain `word_tokenize` wants the punkt models, which cannot be
fetched here). On a single sentence the two agree; on a string of several sentences punkt would also
split the period of each inner sentence off its word ("time." vs "time", ".").
"""

from collections import Counter
from typing import Iterable

from nltk.tokenize import word_tokenize

PAD, UNK = "<PAD>", "<UNK>"
PAD_ID, UNK_ID = 0, 1


def tokenize(sentence: str) -> list[str]:
  """Lower-cased word tokens of one sentence, like EMB's data generation."""
  return word_tokenize(sentence.strip().lower(), preserve_line=True)


def build_vocabulary(token_lists: Iterable[list[str]], known: set[str] | dict) -> list[str]:
  """[PAD, UNK] + the words of all splits (train, then val, then test: pass them in that order),
  most frequent first (ties keep first-seen order), keeping only words with a vector in `known`."""
  counter = Counter()
  for tokens in token_lists:
    counter.update(tokens)
  return [PAD, UNK] + [word for word, _ in counter.most_common() if word in known]


def word_ids(tokens: list[str], index: dict[str, int], max_words: int) -> list[int]:
  """Vocabulary ids of the first `max_words` tokens; unknown words map to UNK."""
  return [index.get(token, UNK_ID) for token in tokens[:max_words]]
