"""Import EMB's released PyTorch checkpoints (`model_best.pth.tar`) as tea_jax variables.

    python -m tea_jax.import_emb --checkpoint model_best.pth.tar --workdir DIR [--words words.txt]

writes an Orbax checkpoint of the variables, the config it implies (`config.json`) and the
vocabulary it implies (`vocab.json`) into DIR; `python -m tea_jax.main --mode eval --workdir DIR`
then evaluates it. In Python: `config, variables = tea_jax.import_emb.load(path)`.

Every key of the state_dict is mapped or explicitly ignored (the unused character CNN); a missing,
unknown or misshaped key is an error naming it. torch is imported only in this module.
"""

import os
import sys
from typing import Callable

import jax
import ml_collections
import numpy as np
from absl import app, flags

from tea_jax import checkpointing, cli, inference
from tea_jax import workdir as workdir_files
from tea_jax.errors import InputError
from tea_jax.model.config import model_defaults
from tea_jax.model.embeddings import FROZEN

# EMB keys with no counterpart: the character CNN is built but unused by EMB's forward pass.
IGNORED_PREFIXES = ("embedding_net.char_emb.",)

_VIDEO_BLOCKS = {"f2f": "guided", "w2w": "plain", "f2w": "guided", "w2f": "plain",
                 "v2v": "guided", "vq2q": "plain"}
_PROPOSAL_BLOCKS = {"p2p": "guided", "p2w": "guided", "w2p": "plain", "s2s": "guided",
                    "pq2q": "plain"}


def _linear(w):  # Conv1d (out, in, 1) -> dense kernel (in, out)
  return w[:, :, 0].T


def _identity(w):
  return w


def _flatten(w):
  return w.reshape(-1)


def _depthwise(w):  # (D, 1, k, 3) -> (k, 3, D)
  return w[:, 0].transpose(1, 2, 0)


def _pointwise(w):  # (D, D, 1, 1) -> (D_in, D_out)
  return w[:, :, 0, 0].T


def _conv2d(w):  # (out, in, i, j) -> (i, j, in, out)
  return w.transpose(2, 3, 1, 0)


def _transpose(w):
  return w.T


Rule = tuple[str, tuple[str, ...], Callable[[np.ndarray], np.ndarray]]


def _dense_rules(emb: str, path: tuple[str, ...]) -> dict[str, Rule]:
  return {f"{emb}.conv1d.weight": ("params", path + ("kernel",), _linear),
          f"{emb}.conv1d.bias": ("params", path + ("bias",), _identity)}


def _norm_rules(emb: str, path: tuple[str, ...]) -> dict[str, Rule]:
  return {f"{emb}.weight": ("params", path + ("scale",), _identity),
          f"{emb}.bias": ("params", path + ("bias",), _identity)}


def _attention_layer_rules(emb: str, path: tuple[str, ...]) -> dict[str, Rule]:
  rules = {}
  for name in ("query", "key", "value"):
    rules.update(_dense_rules(f"{emb}.attention.{name}", path + ("attention", name)))
  rules.update(_dense_rules(f"{emb}.dense.0", path + ("ffn", "dense_in")))
  rules.update(_dense_rules(f"{emb}.dense.2", path + ("ffn", "dense_out")))
  rules.update(_norm_rules(f"{emb}.norm1", path + ("norm1",)))
  rules.update(_norm_rules(f"{emb}.norm2", path + ("norm2",)))
  return rules


def _block_rules(emb: str, path: tuple[str, ...], kind: str) -> dict[str, Rule]:
  if kind == "plain":
    return _attention_layer_rules(emb, path + ("layer",))
  path = path + ("guided",)
  rules = _attention_layer_rules(emb, path + ("layer",))
  rules[f"{emb}.guide.conv_layers.0.weight"] = ("params", path + ("guide", "depthwise"), _depthwise)
  rules[f"{emb}.guide.conv_layers.1.weight"] = (
      "params", path + ("guide", "pointwise", "kernel"), _pointwise)
  rules[f"{emb}.guide.conv_layers.1.bias"] = (
      "params", path + ("guide", "pointwise", "bias"), _identity)
  rules.update(_norm_rules(f"{emb}.guide.layer_norm", path + ("guide", "layer_norm")))
  return rules


def _fuser_rules(emb: str, path: tuple[str, ...]) -> dict[str, Rule]:
  rules = {f"{emb}.cq_attention.w4C": ("params", path + ("w_c",), _flatten),
           f"{emb}.cq_attention.w4Q": ("params", path + ("w_q",), _flatten),
           f"{emb}.cq_attention.w4mlu": ("params", path + ("w_m",), _flatten),
           f"{emb}.cq_concat.weighted_pool.weight": ("params", path + ("w_pool",), _flatten)}
  rules.update(_dense_rules(f"{emb}.cq_attention.cqa_linear", path + ("cqa_linear",)))
  rules.update(_dense_rules(f"{emb}.cq_concat.conv1d", path + ("concat_linear",)))
  return rules


def _predictor_rules() -> dict[str, Rule]:
  rules = {}
  for side in ("start", "end"):
    enc = f"predictor.{side}_encoder"
    path = ("predictor", f"{side}_encoder")
    for suffix, direction in (("", "forward"), ("_reverse", "backward")):
      for kind, convert in (("w_ih", _transpose), ("w_hh", _transpose), ("b_ih", _identity),
                            ("b_hh", _identity)):
        torch_name = {"w_ih": "weight_ih", "w_hh": "weight_hh", "b_ih": "bias_ih",
                      "b_hh": "bias_hh"}[kind]
        rules[f"{enc}.rnn.{torch_name}_l0{suffix}"] = (
            "params", path + ("rnn", f"{direction}_{kind}"), convert)
    rules.update(_dense_rules(f"{enc}.dense_output", path + ("dense_output",)))
    head = ("predictor", f"{side}_head")
    rules.update(_dense_rules(f"predictor.{side}_block.0", head + ("dense_in",)))
    rules.update(_dense_rules(f"predictor.{side}_block.2", head + ("dense_out",)))
  return rules


def emb_rules() -> dict[str, Rule]:
  """Maps every used EMB state_dict key to (collection, flax path, converter)."""
  rules: dict[str, Rule] = {
      "embedding_net.word_emb.unk_vec": ("params", ("word_embedding", "unk"), _identity),
      "embedding_net.word_emb.glove_vec": (FROZEN, ("word_embedding", "word_vectors"), _identity),
      "position.pe": (FROZEN, ("position", "table"), _identity),
      "highlight_layer.conv1d.conv1d.weight": ("params", ("gate", "dense", "kernel"), _linear),
      "highlight_layer.conv1d.conv1d.bias": ("params", ("gate", "dense", "bias"), _identity),
      "ranker.encoders.0.weight": ("params", ("ranker", "conv", "kernel"), _conv2d),
      "ranker.encoders.0.bias": ("params", ("ranker", "conv", "bias"), _identity),
      "ranker.predictor.weight": ("params", ("ranker", "score", "kernel"), _conv2d),
      "ranker.predictor.bias": ("params", ("ranker", "score", "bias"), _identity),
  }
  rules.update(_dense_rules("embedding_net.linear", ("word_embedding", "linear")))
  rules.update(_dense_rules("video_affine.linear", ("video_projection", "linear")))
  for name, kind in _VIDEO_BLOCKS.items():
    rules.update(_block_rules(f"encoder.{name}.layers.0", ("video_encoder", name), kind))
  for name, kind in _PROPOSAL_BLOCKS.items():
    rules.update(_block_rules(f"encoder.{name}.layers.0", ("proposal_encoder", name), kind))
  rules.update(_fuser_rules("fuser1", ("frame_fusion",)))
  rules.update(_fuser_rules("fuser2", ("proposal_fusion",)))
  rules.update(_predictor_rules())
  return rules


# The PAD row is a constant zero vector in tea_jax; EMB stores it as a frozen parameter.
_PAD_KEY = "embedding_net.word_emb.pad_vec"


def config_from_state_dict(state_dict: dict[str, np.ndarray], num_heads: int = 8):
  """The model config a state_dict implies (sizes read off its shapes; EMB: no VN, no PQ)."""
  c = model_defaults()
  try:
    hidden, word_dim, _ = state_dict["embedding_net.linear.conv1d.weight"].shape
    c.hidden, c.word_dim = int(hidden), int(word_dim)
    c.video_dim = int(state_dict["video_affine.linear.conv1d.weight"].shape[1])
    c.vocab_size = 2 + int(state_dict["embedding_net.word_emb.glove_vec"].shape[0])
    c.max_positions = int(state_dict["position.pe"].shape[0])
    c.content_kernel = int(state_dict["encoder.f2f.layers.0.guide.conv_layers.0.weight"].shape[2])
    c.bound_kernel = int(state_dict["encoder.p2p.layers.0.guide.conv_layers.0.weight"].shape[2])
  except KeyError as e:
    raise InputError(f"EMB state_dict lacks {e.args[0]!r}: not an EMB checkpoint?") from None
  c.num_heads = num_heads
  c.merge, c.paragraph_branch = "none", False
  return c


def convert_state_dict(state_dict: dict[str, np.ndarray], config=None, num_heads: int = 8):
  """Converts a (numpy) EMB state_dict to (model config, flax variables). Strict on keys/shapes."""
  config = config or config_from_state_dict(state_dict, num_heads)
  expected = inference.variable_shapes(config)
  rules = emb_rules()
  unknown = [k for k in state_dict
             if k not in rules and k != _PAD_KEY and not k.startswith(IGNORED_PREFIXES)]
  if unknown:
    raise InputError(f"EMB state_dict has keys tea_jax does not know: {sorted(unknown)[:10]}")
  missing = [k for k in rules if k not in state_dict]
  if missing:
    raise InputError(f"EMB state_dict is missing keys: {sorted(missing)[:10]}")
  pad = np.asarray(state_dict.get(_PAD_KEY, np.zeros(1)))
  if np.any(pad != 0):
    raise InputError(f"{_PAD_KEY} is not all zeros; tea_jax's PAD row is a constant zero vector")

  variables: dict = {}
  filled = set()
  for key, (collection, path, convert) in rules.items():
    value = np.asarray(convert(np.asarray(state_dict[key], dtype=np.float32)))
    node = expected[collection]
    for part in path:
      node = node[part]
    if tuple(node.shape) != value.shape:
      raise InputError(f"EMB key {key!r} has shape {np.shape(state_dict[key])}; converted "
                       f"{value.shape} does not fit {collection}/{'/'.join(path)} {node.shape}")
    target = variables.setdefault(collection, {})
    for part in path[:-1]:
      target = target.setdefault(part, {})
    target[path[-1]] = value
    filled.add((collection,) + path)
  wanted = {tuple(str(getattr(k, "key", k)) for k in p)
            for p, _ in jax.tree_util.tree_flatten_with_path(expected)[0]}
  if wanted != filled:
    raise InputError(f"tea_jax variables left unfilled: {sorted(wanted - filled)[:10]}")
  return config, variables


def read_torch_checkpoint(path: str) -> dict[str, np.ndarray]:
  """Reads `state_dict` from an EMB checkpoint file as numpy arrays (torch only here)."""
  import torch  # pylint: disable=import-outside-toplevel
  if not os.path.isfile(path):
    raise FileNotFoundError(f"EMB checkpoint not found: {path}")
  try:
    blob = torch.load(path, map_location="cpu", weights_only=True)
  except Exception as e:  # torch raises several types for a corrupt or foreign file
    raise InputError(f"cannot read {path} as a PyTorch checkpoint: {e}") from e
  state_dict = blob.get("state_dict", blob) if isinstance(blob, dict) else None
  if not isinstance(state_dict, dict):
    raise InputError(f"{path}: expected a dict with 'state_dict', got {type(blob).__name__}")
  return {k: v.detach().cpu().numpy() for k, v in state_dict.items()}


def load(path: str, num_heads: int = 8):
  """Loads an EMB PyTorch checkpoint: returns (experiment config, variables) ready for forward."""
  model, variables = convert_state_dict(read_torch_checkpoint(path), num_heads=num_heads)
  config = ml_collections.ConfigDict({"model": model.to_dict()})
  return config, jax.tree_util.tree_map(np.asarray, variables)


def write_workdir(checkpoint: str, workdir: str, words_file: str | None = None,
                  num_heads: int = 8) -> str:
  """Imports `checkpoint` into `workdir` (Orbax checkpoint, config.json, vocab.json)."""
  config, variables = load(checkpoint, num_heads=num_heads)
  words = None
  if words_file:
    with open(words_file, encoding="utf-8") as f:
      words = [line.rstrip("\n") for line in f if line.strip()]
    if len(words) != config.model.vocab_size - 2:
      raise InputError(f"{words_file}: {len(words)} words, but the checkpoint has "
                       f"{config.model.vocab_size - 2} GloVe rows (ids 2..)")
    words = ["<pad>", "<unk>"] + words
  os.makedirs(workdir, exist_ok=True)
  workdir_files.write_vocabulary(workdir, config.model.vocab_size, words,
                                 os.path.abspath(checkpoint))
  workdir_files.write_config(workdir, config)
  return checkpointing.save_variables(workdir, variables, step=0)


def main(argv):
  del argv
  f = flags.FLAGS
  if not f.checkpoint or not f.workdir:
    sys.exit("usage: python -m tea_jax.import_emb --checkpoint FILE --workdir DIR [--words FILE]")
  path = cli.run_reporting(lambda: write_workdir(f.checkpoint, f.workdir, f.words, f.num_heads))
  print(f"imported {f.checkpoint} -> {path}")


def run_cli():
  """`python -m tea_jax.import_emb`: flags are defined here, not at import, so that importing this
  module never clashes with tea_jax.main's flags."""
  sys.modules["__main__"].__doc__ = __doc__  # absl's --help prints the __main__ module's docstring
  flags.DEFINE_string("checkpoint", None, "EMB model_best.pth.tar to import.")
  flags.DEFINE_string("workdir", None,
                      "Output directory (Orbax checkpoint, config.json, vocab.json).")
  flags.DEFINE_string("words", None, "Optional file: the vocabulary words of ids 2.., one a line.")
  flags.DEFINE_integer("num_heads", 8, "Attention heads of the checkpoint's model (not in shapes).")
  app.run(main)


if __name__ == "__main__":
  run_cli()
