"""`python -m data_prep.narrate [merge]`: narrate videos with an MLLM (data_prep/narration/cli)."""

import sys

from data_prep.narration.cli import main

if __name__ == "__main__":
  sys.exit(main())
