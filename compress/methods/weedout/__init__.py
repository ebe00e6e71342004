"""Weedout: random search over node masks at initialisation (method.py), and the node-mask
machinery it evaluates populations with (node_masks.py)."""

from compress.methods.weedout import method  # noqa: F401  (registers weedout)
