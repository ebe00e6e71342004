"""Pruning at initialisation: SNIP, GraSP and SynFlow (method.py) and their score functions
(scores.py)."""

from compress.methods.pai import method  # noqa: F401  (registers snip, grasp, synflow)
