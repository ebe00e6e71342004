"""Registered pruning methods. Importing this package registers the built-in ones.

One module (or, where a method spans files, one package) per method family; `base.py` holds the
`Method` contract, `presets.py` the config overlays several methods share, `controls.py` the
retrain modes (used by the retrain stage and IMP's controls alike).
"""

from compress.methods import (cpna, edgepopup, gmp, lottery, magnitude, pai,  # noqa: F401
                              structured, weedout)
from compress.methods.base import Method, PruneContext, PruneResult  # noqa: F401
