"""Summarise an annotation file: videos, pairs, clipped moments and every bad record.

    python -m data_prep.inspect FILE [--durations charades.json] [--strict]

Prints one JSON object. Exit status 1 when the file has bad records and --strict is given, 2 when
the file cannot be read at all.
"""

import argparse
import json
import sys

from data_prep.annotations import BadAnnotation, read_annotations


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(prog="python -m data_prep.inspect", description=__doc__.split("\n")[0])
  parser.add_argument("file", help="annotation file (.txt Charades-STA or .json)")
  parser.add_argument("--durations", help="charades.json with the video durations (.txt files)")
  parser.add_argument("--strict", action="store_true", help="exit 1 if any record is bad")
  args = parser.parse_args(argv)
  try:
    annotations = read_annotations(args.file, args.durations)
  except (OSError, BadAnnotation) as e:
    print(json.dumps({"file": args.file, "error": str(e)}, indent=1))
    return 2
  print(json.dumps(annotations.summary(), indent=1))
  return 1 if args.strict and annotations.bad else 0
