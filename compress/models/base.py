"""Build a registered model for a dataset's input shape and class count."""

from __future__ import annotations

from torch import nn

from compress.registry import MODELS


def output_width(num_classes: int) -> int:
    """Binary tasks use one logit (logistic output, as in the CPNA paper); others one per class."""
    return 1 if num_classes == 2 else num_classes


def build_model(name: str, params: dict, in_shape: tuple[int, ...], num_classes: int) -> nn.Module:
    entry = MODELS.get(name)
    typed = entry.params(**params) if entry.params else None
    return entry.obj(typed, tuple(in_shape), output_width(num_classes))
