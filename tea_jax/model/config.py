"""The model's hyper-parameters: one frozen dataclass handed to every module (docs/design.md
section 0). Experiment configs carry the same fields as the `model` ConfigDict (`model_defaults()`),
so that `--config.model.hidden=64` overrides work; `ModelConfig.from_config` turns either into the
dataclass the modules take."""

import dataclasses
from typing import Any

import ml_collections

from tea_jax import config_checks


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
  # Video-narrative merge (VN): one of config_checks.MERGE_MODES.
  merge: str = "none"
  # Paragraph-query branch (PQ) on/off.
  paragraph_branch: bool = False
  # Weight alpha of the paragraph branch: p = (p_v + alpha p_c) / (1 + alpha).
  alpha: float = 0.5
  # BiLSTM implementation, one of config_checks.LSTM_IMPLEMENTATIONS: "auto" (the Pallas kernels on
  # a GPU, the scan elsewhere), "scan", "pallas" (one kernel launch per direction instead of several
  # per time step; interpreted, slowly, off GPUs) or "cudnn" (CUDA GPUs only). Same parameters and
  # results up to rounding (TF32 on GPUs) whatever the choice.
  lstm: str = "auto"

  def __post_init__(self):
    config_checks.check_model(dataclasses.asdict(self))

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
    config_checks.check_known(values, config_checks.MODEL_RULES, "model")
    return cls(**values)


def model_defaults() -> ml_collections.ConfigDict:
  """ModelConfig's defaults as the ConfigDict that experiment configs hold under `model`."""
  return ml_collections.ConfigDict(dataclasses.asdict(ModelConfig()))
