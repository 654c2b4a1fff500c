"""Experiment configs: one `get_config()` per dataset or experiment (ml_collections)."""
