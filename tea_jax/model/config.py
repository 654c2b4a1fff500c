"""The model's hyper-parameters: one frozen dataclass handed to every module (docs/design.md
section 0). Experiment configs carry the same fields as the `model` ConfigDict (`model_config()`),
so that `--config.model.hidden=64` overrides work; `ModelConfig.from_config` turns either into the
dataclass the modules take."""

import dataclasses
from typing import Any

import ml_collections

from tea_jax.errors import ConfigError

# The merges of docs/design.md section 2: "none" is plain EMB, "concat" is the TEA paper's choice.
MERGE_MODES = ("none", "concat", "add", "attention")
# BiLSTM implementations (tea_jax/model/bilstm.py): "auto" ("pallas" on GPUs where its kernels
# compile, "scan" elsewhere), "scan" everywhere, "pallas" (kernels on GPUs, interpreted elsewhere),
# "cudnn" on CUDA GPUs only.
LSTM_IMPLEMENTATIONS = ("auto", "scan", "pallas", "cudnn")


@dataclasses.dataclass(frozen=True)
class ModelConfig:
  """TEA/EMB model hyper-parameters (EMB's defaults; the TEA switches off)."""

  # Hidden width D of every block (channels).
  hidden: int = 128
  # Attention heads; each head has hidden // num_heads channels.
  num_heads: int = 8
  # Dropout rate used everywhere dropout is applied (never inside the LSTMs).
  dropout: float = 0.2
  # Snippet feature width (I3D: 1024 channels).
  video_dim: int = 1024
  # Word-vector width (GloVe 840B: 300).
  word_dim: int = 300
  # Narrative sentence-feature width (mean of word vectors: same as word_dim by default).
  narrative_dim: int = 300
  # Rows of the positional table: the most snippets or query words a sample may have.
  max_positions: int = 128
  # Number of vocabulary ids including PAD (0) and UNK (1); set from the data's vocabulary.
  vocab_size: int = 2
  # Frames per proposal cell (EMB's downscale factor).
  cell_size: int = 8
  # Kernel length (in frames) of the content-guided DSConv.
  content_kernel: int = 7
  # Kernel length (in proposals) of the bound-guided DSConv.
  bound_kernel: int = 1
  # LayerNorm epsilon of every LayerNorm.
  layer_norm_eps: float = 1e-6
  # Video-narrative merge (VN): one of MERGE_MODES.
  merge: str = "none"
  # Paragraph-query branch (PQ) on/off.
  paragraph_branch: bool = False
  # Weight alpha of the paragraph branch: p = (p_v + alpha p_c) / (1 + alpha).
  alpha: float = 0.5
  # BiLSTM implementation, one of LSTM_IMPLEMENTATIONS: "auto" (the Pallas kernels on a GPU, the
  # scan elsewhere), "scan", "pallas" (one kernel launch per direction instead of several per time
  # step; interpreted, slowly, off GPUs) or "cudnn" (CUDA GPUs only). Same parameters and results
  # up to rounding (TF32 on GPUs) whatever the choice.
  lstm: str = "auto"

  def __post_init__(self):
    if self.merge not in MERGE_MODES:
      raise ConfigError(f"config.model.merge={self.merge!r}: expected one of {MERGE_MODES}")
    if self.lstm not in LSTM_IMPLEMENTATIONS:
      raise ConfigError(f"config.model.lstm={self.lstm!r}: expected one of {LSTM_IMPLEMENTATIONS}")
    if self.hidden % self.num_heads:
      raise ConfigError(f"config.model.hidden={self.hidden} is not divisible by "
                       f"config.model.num_heads={self.num_heads}")

  @property
  def uses_narrative(self) -> bool:
    """Whether the model reads narrative features (the VN merge or the PQ branch is on)."""
    return self.merge != "none" or self.paragraph_branch

  @classmethod
  def from_config(cls, config: Any) -> "ModelConfig":
    """From a ModelConfig, a model ConfigDict or dict, or an experiment config with `.model`."""
    if isinstance(config, cls):
      return config
    if "model" in config:
      config = config["model"]
    values = config.to_dict() if isinstance(config, ml_collections.ConfigDict) else dict(config)
    unknown = sorted(set(values) - {f.name for f in dataclasses.fields(cls)})
    if unknown:
      raise ConfigError(f"unknown model config fields {unknown}")
    return cls(**values)


def model_config() -> ml_collections.ConfigDict:
  """ModelConfig's defaults as the ConfigDict that experiment configs hold under `model`."""
  return ml_collections.ConfigDict(dataclasses.asdict(ModelConfig()))
