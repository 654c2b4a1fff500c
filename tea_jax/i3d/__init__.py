"""I3D (Inception-v1 inflated 3D ConvNet, RGB) video features in Flax: the model, an importer of the
public PyTorch checkpoints and VSLNet's Charades-STA extraction recipe.

    extractor = Extractor.from_weights("rgb_charades.pt")   # or a converted .npz
    features = extractor.video_features(frames_uint8)       # (N, H, W, 3) at 24 fps -> (T, 1024)
"""

from tea_jax.i3d.extractor import Extractor
from tea_jax.i3d.importer import load_weights

__all__ = ["Extractor", "load_weights"]
