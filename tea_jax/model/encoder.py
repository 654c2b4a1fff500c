"""EMB's 11-block encoder schedule (docs/design.md section 7), split into its frame and proposal streams.

The frame stream (f2f, w2w, f2w, w2f, v2v, vq2q) is reused with its own weights for TEA's
paragraph-query branch, where the "frames" are the narrative snippets.
"""

import flax.linen as nn

from tea_jax.model.guides import BoundGuidedBlock, ContentGuidedBlock, cross_rowmask
from tea_jax.model.layers import CrossAttentionBlock, SelfAttentionBlock


class _Blocks(nn.Module):
  """Holds the shared layer sizes; subclasses build the blocks."""

  hidden: int
  num_heads: int
  dropout: float
  eps: float

  @property
  def sizes(self):
    return dict(hidden=self.hidden, num_heads=self.num_heads, dropout=self.dropout, eps=self.eps)


class FrameEncoder(_Blocks):
  """Frames and query words, both ways (f2f, w2w, f2w, w2f, v2v, vq2q)."""

  content_kernel: int = 7

  @nn.compact
  def __call__(self, frames, query, frame_mask, query_mask, *, train: bool):
    content = dict(self.sizes, kernel_size=self.content_kernel)
    v1 = ContentGuidedBlock(**content, name="f2f")(frames, frame_mask, train=train)
    q1 = SelfAttentionBlock(**self.sizes, name="w2w")(query, query_mask, train=train)
    v2 = ContentGuidedBlock(**content, name="f2w")(
        v1, frame_mask, train=train, source=q1, source_mask=query_mask)
    # The reference zeroes V1's invalid rows in place inside f2w before w2f reads it.
    v1_rows = v1 * cross_rowmask(frame_mask, query_mask)[..., None]
    vq = CrossAttentionBlock(**self.sizes, name="w2f")(q1, v1_rows, query_mask, frame_mask,
                                                       train=train)
    v3 = ContentGuidedBlock(**content, name="v2v")(v2, frame_mask, train=train)
    vq = SelfAttentionBlock(**self.sizes, name="vq2q")(vq, query_mask, train=train)
    return dict(v1=v1, v2=v2, frames=v3, query=vq, q1=q1)


class ProposalEncoder(_Blocks):
  """Proposals guided by frame cells, and query words attending to proposals (p2p, p2w, w2p, s2s,
  pq2q). Reads V0, V1, V2 of the frame stream as guides and Q1 as the query."""

  cell_size: int = 8
  bound_kernel: int = 1

  @nn.compact
  def __call__(self, proposals, proposal_mask, bounds, stream, v0, q1, query_mask, *, train: bool):
    bound = dict(self.sizes, cell_size=self.cell_size, kernel_size=self.bound_kernel)
    p1 = BoundGuidedBlock(**bound, name="p2p")(proposals, proposal_mask, v0, bounds, train=train)
    p2 = BoundGuidedBlock(**bound, name="p2w")(
        p1, proposal_mask, stream["v1"], bounds, train=train, source=q1, source_mask=query_mask)
    p1_rows = p1 * cross_rowmask(proposal_mask, query_mask)[..., None]
    pq = CrossAttentionBlock(**self.sizes, name="w2p")(q1, p1_rows, query_mask, proposal_mask,
                                                       train=train)
    p3 = BoundGuidedBlock(**bound, name="s2s")(p2, proposal_mask, stream["v2"], bounds, train=train)
    pq = SelfAttentionBlock(**self.sizes, name="pq2q")(pq, query_mask, train=train)
    return p3, pq
