"""edge-popup and IteRand: pruning random networks by training scores (method.py); the
score-masked layers and the seeded weight draws they share (scores.py)."""

from compress.methods.edgepopup import method  # noqa: F401  (registers edgepopup, iterand)
