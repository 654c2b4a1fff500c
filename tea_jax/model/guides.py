"""Content- and bound-guided attention layers (docs/design.md section 5, EMB Eq. 7).

A guided layer first mixes each row with two guide vectors (left, right) through a
depthwise-separable convolution, then lets the mixed features attend (self or cross). The residual
is the row-masked input.
"""

import flax.linen as nn
import jax
import jax.numpy as jnp

from tea_jax.model.config import ModelConfig
from tea_jax.model.layers import (MASK_VALUE, AttentionLayer, Dense, Dropout, LayerNorm, cross_mask,
                                  self_mask, uniform_init, xavier_bound)


def cumulative_max(x: jax.Array, *, reverse: bool = False, method: str | None = None
                   ) -> jax.Array:
  """Inclusive running max along axis 1 of x (B, L, D), from the start (or the end if reverse).

  method "scan": lax.cummax, an associative scan: O(L D) work but ~40 HLO ops per level, which XLA's
  CPU runs fast. "window": one reduce_window over each whole prefix: O(L^2 D) compares (nothing
  for a GPU at L = 128) in one kernel, and its gradient in one select-and-scatter, where the scan
  takes dozens of launches and ~20x the program. Default: "scan" on the CPU, "window" elsewhere.
  Both give the same values; the gradient differs only in how ties share it.
  """
  method = method or ("scan" if jax.default_backend() == "cpu" else "window")
  if method == "scan":
    return jax.lax.cummax(x, axis=1, reverse=reverse)
  if method != "window":
    raise ValueError(f"cumulative_max method must be 'scan' or 'window', got {method!r}")
  length = x.shape[1]
  prefix = (0, length - 1) if reverse else (length - 1, 0)
  return jax.lax.reduce_window(x, -jnp.inf, jax.lax.max, (1, length, 1), (1, 1, 1),
                               ((0, 0), prefix, (0, 0)))


def content_guides(x: jax.Array, mask: jax.Array, method: str | None = None
                   ) -> tuple[jax.Array, jax.Array]:
  """Max over all valid earlier / later frames, per channel, with a cumulative max
  (`cumulative_max`'s method).

  x (B, L, D), mask (B, L). left[t] = max_{valid k < t} x[k], right[t] = max_{valid k > t} x[k];
  0 where no such frame exists and 0 at every padded t (the reference zeroes them after pooling).
  """
  masked = x + (1.0 - mask[..., None]) * MASK_VALUE
  fill = jnp.full_like(masked[:, :1], MASK_VALUE)
  # Exclusive cumulative max: shift the inclusive one by a frame.
  left = jnp.concatenate([fill, cumulative_max(masked, method=method)[:, :-1]], axis=1)
  right = jnp.concatenate(
      [cumulative_max(masked, reverse=True, method=method)[:, 1:], fill], axis=1)
  row_valid = mask[..., None] > 0
  # A finite max means a valid frame exists on that side (masked entries sit at -1e30).
  left = jnp.where(row_valid & (left > 0.5 * MASK_VALUE), left, 0.0)
  right = jnp.where(row_valid & (right > 0.5 * MASK_VALUE), right, 0.0)
  return left, right


def frame_cells(frames: jax.Array, cell_size: int, num_cells: int) -> jax.Array:
  """Max-pools frames into cells of `cell_size`, padding the tail with -1e-30 (EMB's downscale1d).

  frames (B, L, D) -> (B, num_cells, D). Rows are used as they are (padded frames included).
  """
  b, length, d = frames.shape
  pad = num_cells * cell_size - length
  frames = jnp.pad(frames, ((0, 0), (0, pad), (0, 0)), constant_values=-1e-30)
  return first_max(frames.reshape(b, num_cells, cell_size, d), axis=2)


def first_max(x: jax.Array, axis: int) -> jax.Array:
  """max along `axis` whose gradient goes to the FIRST maximal element only, like torch's max_pool.

  Ties are real here: padded frames of a sample can be bitwise equal (e.g. V2's padded rows) while
  their gradients differ (a fully masked attention row passes gradient to its raw scores even though
  -1e30 absorbed them in the forward). jnp.max would split the gradient among the tied rows.
  """
  index = jnp.expand_dims(jnp.argmax(x, axis=axis), axis)
  return jnp.squeeze(jnp.take_along_axis(x, index, axis=axis), axis)


def bound_guides(frames: jax.Array, bounds: jax.Array, proposal_mask: jax.Array,
                 cell_size: int) -> tuple[jax.Array, jax.Array]:
  """Cell features at each proposal's start and end cell, zero on invalid proposals.

  frames (B, L, D) unmasked; bounds (B, P, 2) inclusive snippet indices; proposal_mask (B, P).
  """
  num_cells = -(-frames.shape[1] // cell_size)
  cells = frame_cells(frames, cell_size, num_cells)  # (B, N, D)
  take = lambda idx: jnp.take_along_axis(cells, (idx // cell_size)[..., None], axis=1)
  rowmask = proposal_mask[..., None]
  return take(bounds[..., 0]) * rowmask, take(bounds[..., 1]) * rowmask


class GuideConv(nn.Module):
  """Depthwise conv over (time, [left, right, x]) + pointwise linear, Dropout, LayerNorm, ReLU."""

  config: ModelConfig
  kernel_size: int

  @nn.compact
  def __call__(self, left, right, x, *, train: bool):
    c, k = self.config, self.kernel_size
    # PyTorch Conv2d(D, D, (k, 3), groups=D) fans: in = 3k, out = 3kD.
    kernel = self.param("depthwise", uniform_init(xavier_bound(3 * k, 3 * k * c.hidden)),
                        (k, 3, c.hidden))  # (k, source, D)
    length = x.shape[1]
    out = jnp.zeros_like(x)
    for s, source in enumerate((left, right, x)):
      padded = jnp.pad(source, ((0, 0), (k // 2, k // 2), (0, 0)))
      for dt in range(k):
        out = out + padded[:, dt:dt + length] * kernel[dt, s]
    out = Dense(c.hidden, "pointwise")(out)
    out = Dropout(c.dropout, deterministic=not train)(out)
    return nn.relu(LayerNorm(c.layer_norm_eps, "layer_norm")(out))


class GuidedLayer(nn.Module):
  """Guided self layer (source None) or guided cross layer (target attends to source)."""

  config: ModelConfig
  kernel_size: int

  @nn.compact
  def __call__(self, x, rowmask, left, right, *, train: bool, source=None, source_mask=None):
    x0 = x * rowmask[..., None]
    guided = GuideConv(self.config, self.kernel_size, name="guide")(left, right, x0, train=train)
    if source is None:
      key, mask = guided, self_mask(rowmask)
    else:
      key, mask = source, cross_mask(rowmask, source_mask)
    layer = AttentionLayer(self.config, name="layer")
    return layer(guided, key, key, mask, train=train, residual=x0)


def cross_rowmask(target_mask: jax.Array, source_mask: jax.Array) -> jax.Array:
  """The reference derives a cross layer's row mask as `(target x source mask).any(-1)`."""
  return target_mask * jnp.any(source_mask > 0, axis=-1, keepdims=True).astype(target_mask.dtype)


class ContentGuidedBlock(nn.Module):
  """Frames guided by the max over earlier / later frames (f2f, v2v self; f2w cross)."""

  config: ModelConfig

  @nn.compact
  def __call__(self, x, mask, *, train: bool, source=None, source_mask=None):
    rowmask = mask if source is None else cross_rowmask(mask, source_mask)
    left, right = content_guides(x, rowmask)
    layer = GuidedLayer(self.config, self.config.content_kernel, name="guided")
    return layer(x, rowmask, left, right, train=train, source=source, source_mask=source_mask)


class BoundGuidedBlock(nn.Module):
  """Proposals guided by the frame cells at their bounds (p2p, s2s self; p2w cross)."""

  config: ModelConfig

  @nn.compact
  def __call__(self, x, mask, frames, bounds, *, train: bool, source=None, source_mask=None):
    rowmask = mask if source is None else cross_rowmask(mask, source_mask)
    left, right = bound_guides(frames, bounds, rowmask, self.config.cell_size)
    layer = GuidedLayer(self.config, self.config.bound_kernel, name="guided")
    return layer(x, rowmask, left, right, train=train, source=source, source_mask=source_mask)
