"""Registered pruning methods. Importing this package registers the built-in ones."""

from compress.methods import cpna, edgepopup, gmp, imp, oneshot, pai, structured, weedout  # noqa: F401
from compress.methods.base import PruneContext, PruneResult  # noqa: F401
