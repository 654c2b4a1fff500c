"""Charades: the default config of `python -m tea_jax.main --config configs/charades.py`.

It is Charades-CD with TEA (VN concat merge + PQ branch), the paper's main Charades setting; see
configs/charades_sta.py for the original Charades-STA split and configs/charades_cg.py for CG.
"""

from configs import charades_cd


def get_config(variant=None):
  return charades_cd.get_config(variant)
