"""`python -m tea_jax.demo`: the bundled demo (tea_jax/apps/demo.py)."""

from tea_jax.apps.demo import run_cli

if __name__ == "__main__":
  run_cli()
