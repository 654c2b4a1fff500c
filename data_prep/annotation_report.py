"""Summarise an annotation file: the pairs that will be used, clipped moments and every bad record.

    python -m data_prep.inspect FILE [--durations charades.json] [--bad-records reference|skip|fail]
        [--strict]

Prints one JSON object; its "pairs" is the number of (video, query) pairs build_records will use
under the policy (the default "reference" keeps what EMB keeps; data_prep/annotations.py). Exit
status 1 when the file has bad records and --strict is given, 2 when the file cannot be read at all.
"""

import argparse
import json
import sys

from data_prep.annotations import read_annotations
from tea_jax.config_checks import BAD_RECORD_POLICIES
from tea_jax.errors import InputError


def main(argv=None) -> int:
  """Command line of `python -m data_prep.inspect`; returns the exit status."""
  parser = argparse.ArgumentParser(prog="python -m data_prep.inspect",
                                   description=__doc__.split("\n")[0])
  parser.add_argument("file", help="annotation file (.txt Charades-STA or .json)")
  parser.add_argument("--durations", help="charades.json with the video durations (.txt files)")
  parser.add_argument("--bad-records", choices=BAD_RECORD_POLICIES, default="reference",
                      help="what happens to a questionable record (config data.bad_records)")
  parser.add_argument("--strict", action="store_true", help="exit 1 if any record is bad")
  args = parser.parse_args(argv)
  policy = "skip" if args.bad_records == "fail" else args.bad_records  # "fail": report, then exit 1
  try:
    annotations = read_annotations(args.file, args.durations, bad_records=policy)
  except (OSError, InputError) as e:
    print(json.dumps({"file": args.file, "error": str(e)}, indent=1))
    return 2
  summary = annotations.summary()
  summary["bad_record_policy"] = args.bad_records
  print(json.dumps(summary, indent=1))
  print(f"{args.file}: {summary['pairs']} pairs will be used ({summary['kept_bad_records']} "
        f"questionable kept, {summary['skipped_records']} skipped)", file=sys.stderr)
  failing = args.strict or args.bad_records == "fail"
  return 1 if failing and annotations.bad else 0
