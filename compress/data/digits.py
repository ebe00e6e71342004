"""scikit-learn's 8x8 handwritten digits (ships with the package), standardised per pixel.

Served as 1x8x8 images, so conv nets take them as they are and MLPs flatten them.
"""

from __future__ import annotations

import torch
from pydantic import BaseModel, Field

from compress.vocab import OPTIONS

from compress.data.base import DataBundle, split_three, standardise
from compress.registry import register_dataset


class DigitsParams(BaseModel):
    model_config = OPTIONS
    val_fraction: float = Field(0.15, gt=0, lt=0.5)
    test_fraction: float = Field(0.25, gt=0, lt=0.5)
    seed: int = 0


@register_dataset("digits", params=DigitsParams,
                  summary="scikit-learn 8x8 digits, 1797 images, 10 classes (standardised)")
def load_digits(p: DigitsParams) -> DataBundle:
    from sklearn.datasets import load_digits as sk_digits

    raw = sk_digits()
    x = torch.tensor(raw.data, dtype=torch.float32).reshape(-1, 1, 8, 8)
    y = torch.tensor(raw.target, dtype=torch.long)
    n = len(y)
    n_val, n_test = int(n * p.val_fraction), int(n * p.test_fraction)
    train, val, test = split_three(x, y, (n - n_val - n_test, n_val, n_test), p.seed)
    standardise(train, val, test)
    return DataBundle("digits", train, val, test, num_classes=10, in_shape=(1, 8, 8))
