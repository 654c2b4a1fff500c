"""The TEA model: EMB plus the video-narrative merge (VN) and the paragraph-query branch (PQ).

With `merge="none"` and `paragraph_branch=False` this is exactly EMB (docs/design.md sections 1-9).
"""

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from tea_jax.model.config import ModelConfig
from tea_jax.model.embeddings import NarrativeMerge, PositionalTable, Projection, WordEmbedding
from tea_jax.model.encoder import FrameEncoder, ProposalEncoder
from tea_jax.model.fusion import ContextQueryFusion, HighlightGate
from tea_jax.model.proposals import num_cells, proposal_map, scatter_upper, upper_triangle
from tea_jax.model.ranker import Ranker
from tea_jax.model.span_predictor import SpanPredictor, predict_spans

# Submodule names of the two frame branches: the video branch keeps EMB's checkpoint names, the
# paragraph branch (PQ) has the same modules with their own weights.
VIDEO_BRANCH = dict(encoder="video_encoder", fusion="frame_fusion", gate="gate",
                    predictor="predictor")
PARAGRAPH_BRANCH = dict(encoder="paragraph_encoder", fusion="paragraph_fusion",
                        gate="paragraph_gate", predictor="paragraph_predictor")


class TEA(nn.Module):
  """Video moment retrieval with text-enhanced alignment.

  `batch_branches` runs the video and paragraph frame branches (same shapes, own weights) as one
  computation over their stacked parameters instead of two: half the kernels per step and half the
  program on a GPU. None (the default) does so on GPUs only, where launches bound the step; on the
  CPU two separate branches run on two threads at once, and their rounding and dropout masks are
  those of the plain model.
  """

  config: ModelConfig
  batch_branches: bool | None = None

  @nn.compact
  def __call__(self, batch: dict[str, Any], *, train: bool = False) -> dict[str, jax.Array]:
    c = self.config
    video_mask = batch["video_mask"].astype(jnp.float32)  # (B, L)
    query_mask = batch["query_mask"].astype(jnp.float32)  # (B, W)
    positions = PositionalTable(c, name="position")
    query = WordEmbedding(c, name="word_embedding")(batch["word_ids"], train=train)
    query = query + positions(query_mask.shape[1])  # Q0 (B, W, D)
    video, narrative = self._embed_video(batch, video_mask, train)
    video = video + positions(video_mask.shape[1])  # V0 (B, L, D)

    branches = [(VIDEO_BRANCH, video)]
    if c.paragraph_branch:
      branches.append((PARAGRAPH_BRANCH, narrative + positions(video_mask.shape[1])))
    frames = self._frame_branches(branches, query, video_mask, query_mask, train)
    # Both span predictors at once: on GPUs their BiLSTMs advance in the same recurrences.
    logits = predict_spans([SpanPredictor(c, name=names["predictor"]) for names, _ in branches],
                           [fused for _, fused, _ in frames], video_mask)
    (start_logits, end_logits), (stream, _, highlight) = logits[0], frames[0]
    outputs = dict(start_logits=start_logits, end_logits=end_logits, highlight=highlight,
                   **self._proposal_branch(video, stream, video_mask, query_mask, train))
    start_prob = jax.nn.softmax(start_logits, axis=-1)
    end_prob = jax.nn.softmax(end_logits, axis=-1)
    if c.paragraph_branch:
      p_start, p_end = logits[1]
      outputs.update(paragraph_start_logits=p_start, paragraph_end_logits=p_end)
      # p = (p_v + alpha p_c) / (1 + alpha): same argmax as the paper's p_v + alpha p_c.
      start_prob = (start_prob + c.alpha * jax.nn.softmax(p_start, -1)) / (1.0 + c.alpha)
      end_prob = (end_prob + c.alpha * jax.nn.softmax(p_end, -1)) / (1.0 + c.alpha)
    outputs.update(start_prob=start_prob, end_prob=end_prob)
    return outputs

  def _embed_video(self, batch, video_mask, train):
    """Projected snippets, merged with the projected narratives under VN; and the projected
    narratives themselves (None when the model reads none)."""
    c = self.config
    video = Projection(c, name="video_projection")(batch["video"], train=train)
    if not c.uses_narrative:
      return video, None
    if "narrative" not in batch:
      raise KeyError("this TEA config (merge or paragraph_branch on) needs batch['narrative'] "
                     "(B, L, narrative_dim)")
    narrative = Projection(c, name="narrative_projection")(batch["narrative"], train=train)
    if c.merge != "none":
      video = NarrativeMerge(c, name="merge")(video, narrative, video_mask, train=train)
    return video, narrative

  def _frame_branches(self, branches, query, frame_mask, query_mask, train):
    """(encoder stream, gated fused features, highlight) of each (names, frames) branch."""
    batched = self.batch_branches
    if batched is None:
      batched = jax.default_backend() == "gpu"
    # Parameters are created by the plain path; the batched one reads them.
    if batched and len(branches) > 1 and not self.is_initializing():
      return self._stacked_frame_branches(branches, query, frame_mask, query_mask, train)
    return [self._frame_branch(names, frames, query, frame_mask, query_mask, train)
            for names, frames in branches]

  def _frame_branch(self, names, frames, query, frame_mask, query_mask, train):
    """Encoder, context-query fusion and highlight gate over one frame sequence (video snippets
    or narrative snippets)."""
    c = self.config
    stream = FrameEncoder(c, name=names["encoder"])(frames, query, frame_mask, query_mask,
                                                    train=train)
    fused = ContextQueryFusion(c, name=names["fusion"])(stream["frames"], stream["query"],
                                                        frame_mask, query_mask, train=train)
    fused, highlight = HighlightGate(name=names["gate"])(fused, frame_mask)
    return stream, fused, highlight

  def _stacked_frame_branches(self, branches, query, frame_mask, query_mask, train):
    """_frame_branch of every branch as one vmapped computation over stacked parameters."""
    c = self.config
    params = self.variables["params"]
    parts = ("encoder", "fusion", "gate")
    stacked = jax.tree_util.tree_map(
        lambda *leaves: jnp.stack(leaves),
        *[{part: params[names[part]] for part in parts} for names, _ in branches])
    keys = jax.random.split(self.make_rng("dropout"), len(branches)) if train else None

    def branch(p, frames, key):
      rngs = {"dropout": key} if train else {}
      stream = FrameEncoder(c).apply({"params": p["encoder"]}, frames, query, frame_mask,
                                     query_mask, train=train, rngs=rngs)
      fused = ContextQueryFusion(c).apply({"params": p["fusion"]}, stream["frames"],
                                          stream["query"], frame_mask, query_mask, train=train,
                                          rngs=rngs)
      fused, highlight = HighlightGate().apply({"params": p["gate"]}, fused, frame_mask)
      return stream, fused, highlight

    frames = jnp.stack([f for _, f in branches])
    stream, fused, highlight = jax.vmap(branch, in_axes=(0, 0, 0 if train else None))(
        stacked, frames, keys)
    return [jax.tree_util.tree_map(lambda a, n=n: a[n], (stream, fused, highlight))
            for n in range(len(branches))]

  def _proposal_branch(self, video, stream, video_mask, query_mask, train):
    """EMB's elastic-boundary branch: every (start cell, end cell) proposal scored by the ranker."""
    c = self.config
    length = video_mask.shape[1]
    proposals, proposal_mask, bounds = proposal_map(video, video_mask, c.cell_size)
    # Rows j < i are invalid everywhere and reach no valid output (see tea_jax/model/proposals.py);
    # with a bound kernel of 1 no row mixes with its neighbours, so only the upper triangle is
    # computed.
    cells = num_cells(length, c.cell_size)
    keep = upper_triangle(cells) if c.bound_kernel == 1 else np.arange(cells * cells)
    features, proposal_query = ProposalEncoder(c, name="proposal_encoder")(
        proposals[:, keep], proposal_mask[:, keep], bounds[:, keep], stream, video, stream["q1"],
        query_mask, train=train)
    features = ContextQueryFusion(c, name="proposal_fusion")(
        features, proposal_query, proposal_mask[:, keep], query_mask, train=train)
    if len(keep) < cells * cells:
      features = scatter_upper(features, cells)
    scores = Ranker(c, name="ranker")(features, proposal_mask)
    return dict(proposal_scores=scores, proposal_mask=proposal_mask, proposal_bounds=bounds)
