"""Inception-v1 I3D (the RGB stream of Carreira and Zisserman's inflated 3D ConvNet) in Flax Linen.

The layer names follow the public PyTorch port (piergiaj/pytorch-i3d), so that its state_dict keys
map one to one (tea_jax/i3d/importer.py). Layout is channels last: clips are (B, T, H, W, 3),
float32 pixels in [-1, 1].

'Same' padding is XLA's SAME: per axis the total pad is max(k - s, 0) when n % s == 0, else
max(k - n % s, 0), with the odd extra at the end; that is exactly the PyTorch port's dynamic pad.
Its max pools pad with zeros rather than -inf; every pool input follows a ReLU (>= 0), so both
paddings give the same maximum.
"""

from typing import Any, Sequence

import flax.linen as nn
import jax.numpy as jnp

FEATURE_DIM = 1024
# Temporal and spatial kernel of the final average pool (stride 1, no padding).
AVG_POOL = (2, 7, 7)

# Inception blocks: name -> output channels [b0, b1a, b1b, b2a, b2b, b3b] (branches concatenated
# in the order b0, b1b, b2b, b3b).
INCEPTION = {
    "Mixed_3b": (64, 96, 128, 16, 32, 32),
    "Mixed_3c": (128, 128, 192, 32, 96, 64),
    "Mixed_4b": (192, 96, 208, 16, 48, 64),
    "Mixed_4c": (160, 112, 224, 24, 64, 64),
    "Mixed_4d": (128, 128, 256, 24, 64, 64),
    "Mixed_4e": (112, 144, 288, 32, 64, 64),
    "Mixed_4f": (256, 160, 320, 32, 128, 128),
    "Mixed_5b": (256, 160, 320, 32, 128, 128),
    "Mixed_5c": (384, 192, 384, 48, 128, 128),
}
BRANCH_UNITS = ("b0", "b1a", "b1b", "b2a", "b2b", "b3b")
# Stem units: name -> (output channels, kernel, strides).
STEM = {
    "Conv3d_1a_7x7": (64, (7, 7, 7), (2, 2, 2)),
    "Conv3d_2b_1x1": (64, (1, 1, 1), (1, 1, 1)),
    "Conv3d_2c_3x3": (192, (3, 3, 3), (1, 1, 1)),
}
# The network in order: a stem unit, a max pool (kernel, strides) or an Inception block.
LAYERS: tuple[tuple[str, Any], ...] = (
    ("Conv3d_1a_7x7", "unit"),
    ("MaxPool3d_2a_3x3", ((1, 3, 3), (1, 2, 2))),
    ("Conv3d_2b_1x1", "unit"),
    ("Conv3d_2c_3x3", "unit"),
    ("MaxPool3d_3a_3x3", ((1, 3, 3), (1, 2, 2))),
    ("Mixed_3b", "inception"),
    ("Mixed_3c", "inception"),
    ("MaxPool3d_4a_3x3", ((3, 3, 3), (2, 2, 2))),
    ("Mixed_4b", "inception"),
    ("Mixed_4c", "inception"),
    ("Mixed_4d", "inception"),
    ("Mixed_4e", "inception"),
    ("Mixed_4f", "inception"),
    ("MaxPool3d_5a_2x2", ((2, 2, 2), (2, 2, 2))),
    ("Mixed_5b", "inception"),
    ("Mixed_5c", "inception"),
)


class Unit3D(nn.Module):
  """Conv3d with 'same' padding and no bias, inference BatchNorm (eps 1e-3), ReLU."""
  features: int
  kernel: Sequence[int] = (1, 1, 1)
  strides: Sequence[int] = (1, 1, 1)
  precision: Any = None

  @nn.compact
  def __call__(self, x):  # (B, T, H, W, C_in) -> (B, T', H', W', features)
    x = nn.Conv(self.features, tuple(self.kernel), tuple(self.strides), padding="SAME",
                use_bias=False, precision=self.precision, name="conv3d")(x)
    x = nn.BatchNorm(use_running_average=True, epsilon=1e-3, name="bn")(x)
    return nn.relu(x)


class InceptionBlock(nn.Module):
  """Four branches (1x1; 1x1 then 3x3; 1x1 then 3x3; 3x3 max pool then 1x1), concatenated."""
  channels: Sequence[int]  # [b0, b1a, b1b, b2a, b2b, b3b]
  precision: Any = None

  @nn.compact
  def __call__(self, x):
    c0, c1a, c1b, c2a, c2b, c3 = self.channels
    unit = lambda c, k, name: Unit3D(c, k, precision=self.precision, name=name)
    b0 = unit(c0, (1, 1, 1), "b0")(x)
    b1 = unit(c1b, (3, 3, 3), "b1b")(unit(c1a, (1, 1, 1), "b1a")(x))
    b2 = unit(c2b, (3, 3, 3), "b2b")(unit(c2a, (1, 1, 1), "b2a")(x))
    b3 = unit(c3, (1, 1, 1), "b3b")(nn.max_pool(x, (3, 3, 3), (1, 1, 1), padding="SAME"))
    return jnp.concatenate([b0, b1, b2, b3], axis=-1)


def pooled_shape(t: int, h: int, w: int) -> tuple[int, int, int]:
  """(T', H', W') of the final average pool for a (t, h, w) clip: Mixed_5c is ceil(t / 8),
  ceil(h / 32), ceil(w / 32), and the (2, 7, 7) VALID pool removes 1, 6 and 6."""
  ceil = lambda n, s: -(-n // s)
  return ceil(t, 8) - 1, ceil(h, 32) - 6, ceil(w, 32) - 6


class Unit3DLogits(nn.Module):
  """The classifier unit: 1x1x1 conv with bias, nothing else (named like the PyTorch unit)."""
  num_classes: int
  precision: Any = None

  @nn.compact
  def __call__(self, x):
    return nn.Conv(self.num_classes, (1, 1, 1), padding="VALID", use_bias=True,
                   precision=self.precision, name="conv3d")(x)


class InceptionI3d(nn.Module):
  """I3D backbone with the classifier head; `features` is the pooled 1024-d map (no logits)."""
  num_classes: int = 400
  precision: Any = None

  def setup(self):
    layers = {}
    for name, kind in LAYERS:
      if kind == "unit":
        features, kernel, strides = STEM[name]
        layers[name] = Unit3D(features, kernel, strides, precision=self.precision, name=name)
      elif kind == "inception":
        layers[name] = InceptionBlock(INCEPTION[name], precision=self.precision, name=name)
    self.layers = layers
    # The classifier: a 1x1x1 conv with bias on the pooled features (no BatchNorm, no ReLU).
    self.logits = Unit3DLogits(self.num_classes, precision=self.precision, name="logits")

  def backbone(self, clips):
    """(B, T, H, W, 3) -> Mixed_5c (B, ceil(T / 8), ceil(H / 32), ceil(W / 32), 1024)."""
    x = clips
    for name, kind in LAYERS:
      if isinstance(kind, str):
        x = self.layers[name](x)
      else:
        kernel, strides = kind
        x = nn.max_pool(x, kernel, strides, padding="SAME")
    return x

  def features(self, clips):  # (B, T, H, W, 3) -> (B, T', H', W', 1024)
    """The average-pooled Mixed_5c map (the PyTorch port's `extract_features`)."""
    _, t, h, w, _ = clips.shape
    if min(pooled_shape(t, h, w)) < 1:
      raise ValueError(f"I3D clip (T, H, W) = {(t, h, w)} is too small for the final (2, 7, 7) "
                       f"average pool: it needs T > 8 and H, W > 192")
    x = self.backbone(clips)
    return nn.avg_pool(x, AVG_POOL, strides=(1, 1, 1), padding="VALID")

  def __call__(self, clips):  # (B, T, H, W, 3) -> (B, T', H', W', num_classes)
    """Class logits per pooled position (H' = W' = 1 for 224 x 224 clips; dropout is inactive at
    inference)."""
    return self.logits(self.features(clips))

