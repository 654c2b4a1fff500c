"""The TEA model: EMB plus the video-narrative merge (VN) and the paragraph-query branch (PQ).

With `merge="none"` and `paragraph_branch=False` this is exactly EMB (docs/design.md sections 1-9).
"""

from typing import Any

import flax.linen as nn
import jax
import ml_collections
import numpy as np

from tea_jax.model.config import MERGE_MODES
from tea_jax.model.embeddings import NarrativeMerge, PositionalTable, Projection, WordEmbedding
from tea_jax.model.encoder import FrameEncoder, ProposalEncoder
from tea_jax.model.fusion import ContextQueryFusion, HighlightGate
from tea_jax.model.span_predictor import SpanPredictor
from tea_jax.model.proposals import num_cells, proposal_map, scatter_upper, upper_triangle
from tea_jax.model.ranker import Ranker


class TEA(nn.Module):
  """Video moment retrieval with text-enhanced alignment. `config` is the `model` ConfigDict."""

  config: ml_collections.ConfigDict

  def _sizes(self):
    c = self.config
    return dict(hidden=c.hidden, num_heads=c.num_heads, dropout=c.dropout, eps=c.layer_norm_eps)

  @property
  def uses_narrative(self) -> bool:
    return self.config.merge != "none" or self.config.paragraph_branch

  @nn.compact
  def __call__(self, batch: dict[str, Any], *, train: bool = False) -> dict[str, jax.Array]:
    c = self.config
    if c.merge not in MERGE_MODES:
      raise ValueError(f"config.model.merge={c.merge!r}: expected one of {MERGE_MODES}")
    video_mask = batch["video_mask"].astype(jax.numpy.float32)  # (B, L)
    query_mask = batch["query_mask"].astype(jax.numpy.float32)  # (B, W)
    length, words = video_mask.shape[1], query_mask.shape[1]
    positions = PositionalTable(c.max_positions, c.hidden, name="position")

    query = WordEmbedding(c.vocab_size, c.word_dim, c.hidden, c.dropout, name="word_embedding")(
        batch["word_ids"], train=train) + positions(words)
    video = Projection(c.hidden, c.dropout, name="video_projection")(batch["video"], train=train)
    narrative = None
    if self.uses_narrative:
      if "narrative" not in batch:
        raise KeyError("this TEA config (merge or paragraph_branch on) needs batch['narrative'] "
                       "(B, L, narrative_dim)")
      narrative = Projection(c.hidden, c.dropout, name="narrative_projection")(
          batch["narrative"], train=train)
    if c.merge != "none":
      video = NarrativeMerge(c.merge, **self._sizes(), name="merge")(
          video, narrative, video_mask, train=train)
    video = video + positions(length)  # V0 (B, L, D)

    stream = FrameEncoder(**self._sizes(), content_kernel=c.content_kernel,
                          name="video_encoder")(video, query, video_mask, query_mask, train=train)
    proposals, proposal_mask, bounds = proposal_map(video, video_mask, c.cell_size)
    # Rows j < i are invalid everywhere and reach no valid output (see tea_jax.proposals); with a
    # bound kernel of 1 no row mixes with its neighbours, so only the upper triangle is computed.
    cells = num_cells(length, c.cell_size)
    keep = upper_triangle(cells) if c.bound_kernel == 1 else np.arange(cells * cells)
    proposals, proposal_query = ProposalEncoder(
        **self._sizes(), cell_size=c.cell_size, bound_kernel=c.bound_kernel,
        name="proposal_encoder")(proposals[:, keep], proposal_mask[:, keep], bounds[:, keep],
                                 stream, video, stream["q1"], query_mask, train=train)

    frames = ContextQueryFusion(c.hidden, c.dropout, name="frame_fusion")(
        stream["frames"], stream["query"], video_mask, query_mask, train=train)
    frames, highlight = HighlightGate(name="gate")(frames, video_mask)
    start_logits, end_logits = SpanPredictor(c.hidden, c.lstm, name="predictor")(frames, video_mask)
    proposals = ContextQueryFusion(c.hidden, c.dropout, name="proposal_fusion")(
        proposals, proposal_query, proposal_mask[:, keep], query_mask, train=train)
    if len(keep) < cells * cells:
      proposals = scatter_upper(proposals, cells)
    proposal_scores = Ranker(c.hidden, name="ranker")(proposals, proposal_mask)

    start_prob = jax.nn.softmax(start_logits, axis=-1)
    end_prob = jax.nn.softmax(end_logits, axis=-1)
    outputs = dict(start_logits=start_logits, end_logits=end_logits, highlight=highlight,
                   proposal_scores=proposal_scores, proposal_mask=proposal_mask,
                   proposal_bounds=bounds)
    if c.paragraph_branch:
      paragraph = narrative + positions(length)
      nstream = FrameEncoder(**self._sizes(), content_kernel=c.content_kernel,
                             name="paragraph_encoder")(paragraph, query, video_mask, query_mask,
                                                       train=train)
      nframes = ContextQueryFusion(c.hidden, c.dropout, name="paragraph_fusion")(
          nstream["frames"], nstream["query"], video_mask, query_mask, train=train)
      nframes, _ = HighlightGate(name="paragraph_gate")(nframes, video_mask)
      nstart, nend = SpanPredictor(c.hidden, c.lstm, name="paragraph_predictor")(nframes, video_mask)
      outputs.update(paragraph_start_logits=nstart, paragraph_end_logits=nend)
      # p = (p_v + alpha p_c) / (1 + alpha): same argmax as the paper's p_v + alpha p_c.
      start_prob = (start_prob + c.alpha * jax.nn.softmax(nstart, -1)) / (1.0 + c.alpha)
      end_prob = (end_prob + c.alpha * jax.nn.softmax(nend, -1)) / (1.0 + c.alpha)
    outputs.update(start_prob=start_prob, end_prob=end_prob)
    return outputs
