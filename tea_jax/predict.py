"""`python -m tea_jax.predict`: ask a trained model about one video (tea_jax/apps/predict.py)."""

import sys

from tea_jax.apps.predict import main

if __name__ == "__main__":
  sys.exit(main())
