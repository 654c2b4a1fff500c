"""Context-query fusion and the highlight gate (docs/design.md section 8, EMB's VSLFuser)."""

import flax.linen as nn
import jax
import jax.numpy as jnp

from tea_jax.model.config import ModelConfig
from tea_jax.model.layers import Dropout, Dense, mask_logits, uniform_init, xavier_bound


class ContextQueryFusion(nn.Module):
  """Trilinear context-query attention, then concatenation with an attention-pooled query."""

  config: ModelConfig

  @nn.compact
  def __call__(self, context, query, context_mask, query_mask, *, train: bool):
    # context (B, Lc, D) frames or proposals; query (B, W, D).
    d = self.config.hidden
    # PyTorch xavier fans: (D, 1) -> in 1, out D; (1, 1, D) -> in D, out D.
    w_c = self.param("w_c", uniform_init(xavier_bound(1, d)), (d,))
    w_q = self.param("w_q", uniform_init(xavier_bound(1, d)), (d,))
    w_m = self.param("w_m", uniform_init(xavier_bound(d, d)), (d,))
    w_p = self.param("w_pool", uniform_init(xavier_bound(1, d)), (d,))
    drop = Dropout(self.config.dropout, deterministic=not train)
    context_d, query_d = drop(context), drop(query)  # dropout only on the score's copies
    scores = (context_d @ w_c)[:, :, None] + (query_d @ w_q)[:, None, :] + jnp.einsum(
        "bcd,bwd->bcw", context_d * w_m, query_d)  # (B, Lc, W)
    to_query = jax.nn.softmax(mask_logits(scores, query_mask[:, None, :]), axis=2)
    to_context = jax.nn.softmax(mask_logits(scores, context_mask[:, :, None]), axis=1)
    c2q = jnp.einsum("bcw,bwd->bcd", to_query, query)
    # q2c = A B^T X, associated as A (B^T X): (W, Lc) @ (Lc, D) first is cheaper than (Lc, Lc).
    q2c = jnp.einsum("bcw,bwd->bcd", to_query, jnp.einsum("bcw,bcd->bwd", to_context, context))
    fused = Dense(d, "cqa_linear")(
        jnp.concatenate([context, c2q, context * c2q, context * q2c], axis=-1))
    pool = jax.nn.softmax(mask_logits(query @ w_p, query_mask), axis=1)  # (B, W)
    pooled = jnp.einsum("bw,bwd->bd", pool, query)
    pooled = jnp.broadcast_to(pooled[:, None, :], fused.shape)
    return nn.relu(Dense(d, "concat_linear")(jnp.concatenate([fused, pooled], axis=-1)))


class HighlightGate(nn.Module):
  """h = sigmoid(Linear(x) - 1e30 on padding); returns (x * h, h)."""

  @nn.compact
  def __call__(self, x, mask):
    highlight = jax.nn.sigmoid(mask_logits(Dense(1, "dense")(x)[..., 0], mask))  # (B, L)
    return x * highlight[..., None], highlight
