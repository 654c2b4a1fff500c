"""`python -m tea_jax.import_emb`: import EMB's PyTorch checkpoints (tea_jax/apps/import_emb.py)."""

from tea_jax.apps.import_emb import run_cli

if __name__ == "__main__":
  run_cli()
