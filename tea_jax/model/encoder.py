"""EMB's 11-block encoder schedule (docs/design.md section 7), split into its frame and proposal
streams.

The frame stream (f2f, w2w, f2w, w2f, v2v, vq2q) is reused with its own weights for TEA's
paragraph-query branch, where the "frames" are the narrative snippets.
"""

import flax.linen as nn

from tea_jax.model.config import ModelConfig
from tea_jax.model.guides import BoundGuidedBlock, ContentGuidedBlock, cross_rowmask
from tea_jax.model.layers import CrossAttentionBlock, SelfAttentionBlock


class FrameEncoder(nn.Module):
  """Frames and query words, both ways (f2f, w2w, f2w, w2f, v2v, vq2q)."""

  config: ModelConfig

  @nn.compact
  def __call__(self, frames, query, frame_mask, query_mask, *, train: bool):
    c = self.config
    v1 = ContentGuidedBlock(c, name="f2f")(frames, frame_mask, train=train)
    q1 = SelfAttentionBlock(c, name="w2w")(query, query_mask, train=train)
    v2 = ContentGuidedBlock(c, name="f2w")(
        v1, frame_mask, train=train, source=q1, source_mask=query_mask)
    # The reference zeroes V1's invalid rows in place inside f2w before w2f reads it.
    v1_rows = v1 * cross_rowmask(frame_mask, query_mask)[..., None]
    vq = CrossAttentionBlock(c, name="w2f")(q1, v1_rows, query_mask, frame_mask, train=train)
    v3 = ContentGuidedBlock(c, name="v2v")(v2, frame_mask, train=train)
    vq = SelfAttentionBlock(c, name="vq2q")(vq, query_mask, train=train)
    return dict(v1=v1, v2=v2, frames=v3, query=vq, q1=q1)


class ProposalEncoder(nn.Module):
  """Proposals guided by frame cells, and query words attending to proposals (p2p, p2w, w2p, s2s,
  pq2q). Reads V0, V1, V2 of the frame stream as guides and Q1 as the query."""

  config: ModelConfig

  @nn.compact
  def __call__(self, proposals, proposal_mask, bounds, stream, v0, q1, query_mask, *, train: bool):
    c = self.config
    p1 = BoundGuidedBlock(c, name="p2p")(proposals, proposal_mask, v0, bounds, train=train)
    p2 = BoundGuidedBlock(c, name="p2w")(
        p1, proposal_mask, stream["v1"], bounds, train=train, source=q1, source_mask=query_mask)
    p1_rows = p1 * cross_rowmask(proposal_mask, query_mask)[..., None]
    pq = CrossAttentionBlock(c, name="w2p")(q1, p1_rows, query_mask, proposal_mask, train=train)
    p3 = BoundGuidedBlock(c, name="s2s")(p2, proposal_mask, stream["v2"], bounds, train=train)
    pq = SelfAttentionBlock(c, name="pq2q")(pq, query_mask, train=train)
    return p3, pq
