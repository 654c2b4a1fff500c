"""Model defaults of docs/design.md section 0, shared by every experiment config."""

import ml_collections

# The merges of docs/design.md section 2: "none" is plain EMB, "concat" is the TEA paper's choice.
MERGE_MODES = ("none", "concat", "add", "attention")


def model_config() -> ml_collections.ConfigDict:
  """Returns the TEA/EMB model hyper-parameters (EMB's defaults; TEA switches off)."""
  c = ml_collections.ConfigDict()
  # Hidden width D of every block (channels).
  c.hidden = 128
  # Attention heads; each head has hidden // num_heads channels.
  c.num_heads = 8
  # Dropout rate used everywhere dropout is applied (never inside the LSTMs).
  c.dropout = 0.2
  # Snippet feature width (I3D: 1024 channels).
  c.video_dim = 1024
  # Word-vector width (GloVe 840B: 300).
  c.word_dim = 300
  # Narrative sentence-feature width (mean of word vectors: same as word_dim by default).
  c.narrative_dim = 300
  # Rows of the positional table: the most snippets or query words a sample may have.
  c.max_positions = 128
  # Number of vocabulary ids including PAD (0) and UNK (1); set from the data's vocabulary.
  c.vocab_size = 2
  # Frames per proposal cell (EMB's downscale factor).
  c.cell_size = 8
  # Kernel length (in frames) of the content-guided DSConv.
  c.content_kernel = 7
  # Kernel length (in proposals) of the bound-guided DSConv.
  c.bound_kernel = 1
  # LayerNorm epsilon of every LayerNorm.
  c.layer_norm_eps = 1e-6
  # Video-narrative merge (VN): one of MERGE_MODES.
  c.merge = "none"
  # Paragraph-query branch (PQ) on/off.
  c.paragraph_branch = False
  # Weight alpha of the paragraph branch: p = (p_v + alpha p_c) / (1 + alpha).
  c.alpha = 0.5
  # BiLSTM implementation (tea_jax.predictor): "scan" (everywhere) or "cudnn" (CUDA GPUs only; same
  # parameters and results up to TF32 rounding, far fewer kernels per step).
  c.lstm = "scan"
  return c


def loss_config() -> ml_collections.ConfigDict:
  """Loss weights and label rules of docs/design.md section 10 (EMB's defaults)."""
  c = ml_collections.ConfigDict()
  # Weight of the highlight (gate) BCE in the total loss.
  c.highlight_weight = 5.0
  # Weight of the proposal-ranking BCE in the total loss.
  c.rank_weight = 1.0
  # Ranking targets: clip((IoU - rank_min_iou) / (rank_max_iou - rank_min_iou), 0, 1).
  c.rank_min_iou = 0.3
  c.rank_max_iou = 0.7
  # The highlight region is extended on both sides by this fraction of its length (in snippets).
  c.highlight_extension = 0.1
  # End of the highlight region before extension: "min" of (true end, pseudo end) as in EMB's code,
  # or "max" as the TEA paper's Eq. 16 writes it.
  c.highlight_end = "min"
  return c
