"""The proposal map of EMB's elastic-boundary branch (docs/design.md section 6).

Proposals with j < i are invalid in every sample. Their rows never reach a valid output (they are
masked keys everywhere, zeroed before the ranker and, with the default bound kernel of 1, mixed with
no neighbour), so the model runs the proposal blocks on the upper triangle only (N(N+1)/2 rows
instead of N^2: 136 vs 256 at L = 128) and scatters back to the full N x N map for the ranker.
"""

import jax
import jax.numpy as jnp
import numpy as np

from tea_jax.model.layers import MASK_VALUE

# Padding value of EMB's downscale1d beyond the padded length L (tiny, but not zero).
TAIL_VALUE = -1e-30


def num_cells(length: int, cell_size: int) -> int:
  """N = ceil(L / cell_size) proposal cells for a padded length L."""
  return -(-length // cell_size)


def proposal_map(frames: jax.Array, video_mask: jax.Array, cell_size: int = 8):
  """Builds every (start cell i, end cell j) proposal, flattened row-major (index i * N + j).

  frames (B, L, D) = V0; video_mask (B, L). Returns
    features (B, N*N, D): max over cells i..j (0 on invalid proposals),
    mask (B, N*N): j >= i and cell j holds a valid frame,
    bounds (B, N*N, 2) int32: inclusive snippet span [min(8i, v_len-1), min(8j+7, v_len-1)], (0, 0)
      on invalid proposals.
  """
  b, length, d = frames.shape
  n = num_cells(length, cell_size)
  pad = n * cell_size - length
  values = frames + (1.0 - video_mask[..., None]) * MASK_VALUE
  values = jnp.pad(values, ((0, 0), (0, pad), (0, 0)), constant_values=TAIL_VALUE)
  cells = values.reshape(b, n, cell_size, d).max(axis=2)  # (B, N, D)
  frame_valid = jnp.pad(video_mask, ((0, 0), (0, pad))).reshape(b, n, cell_size)
  cell_valid = frame_valid.max(axis=2) > 0  # (B, N)

  # Row i holds max(cells[i..j]) for j >= i: a cumulative max over the cells from i on.
  rows = []
  for i in range(n):
    running = jax.lax.cummax(cells[:, i:], axis=1)
    rows.append(jnp.pad(running, ((0, 0), (i, 0), (0, 0))))
  features = jnp.stack(rows, axis=1)  # (B, N_i, N_j, D)

  idx = jnp.arange(n)
  upper = idx[None, :] >= idx[:, None]  # (N_i, N_j): j >= i
  mask = upper[None] & cell_valid[:, None, :]  # (B, N, N)
  features = jnp.where(mask[..., None], features, 0.0).reshape(b, n * n, d)

  v_last = (video_mask.sum(axis=1).astype(jnp.int32) - 1)[:, None, None]  # (B, 1, 1)
  start = jnp.minimum(idx[:, None] * cell_size, v_last)
  end = jnp.minimum(idx[None, :] * cell_size + cell_size - 1, v_last)
  start, end = jnp.broadcast_arrays(start, end)
  bounds = jnp.stack([start, end], axis=-1) * mask[..., None]
  mask = mask.reshape(b, n * n).astype(frames.dtype)
  return features, mask, bounds.reshape(b, n * n, 2).astype(jnp.int32)


def upper_triangle(n: int) -> np.ndarray:
  """Flat indices i * N + j of the proposals with j >= i (the only ones that can be valid)."""
  i, j = np.triu_indices(n)
  return (i * n + j).astype(np.int32)


def scatter_upper(values: jax.Array, n: int) -> jax.Array:
  """Inverse of `values[:, upper_triangle(n)]`: (B, N(N+1)/2, ...) -> (B, N*N, ...), zeros below."""
  full = jnp.zeros((values.shape[0], n * n) + values.shape[2:], values.dtype)
  return full.at[:, upper_triangle(n)].set(values)
