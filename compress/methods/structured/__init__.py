"""Channel pruning (l1filter, slimming; method.py) and what it shares: choosing groups, masks or
surgery, requested vs achieved (pruning.py)."""

from compress.methods.structured import method  # noqa: F401  (registers l1filter, slimming)
