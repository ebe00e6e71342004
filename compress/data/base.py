"""In-memory datasets with deterministic train/val/test splits."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

import torch

from compress.errors import UserError
from compress.registry import DATASETS


@dataclass
class Split:
    x: torch.Tensor
    y: torch.Tensor  # int64 class labels

    def __len__(self) -> int:
        return len(self.y)


@dataclass
class DataBundle:
    name: str
    train: Split
    val: Split
    test: Split
    num_classes: int
    in_shape: tuple[int, ...]

    def fingerprint(self) -> str:
        """sha256 of every split's tensors: identifies the exact data a run saw."""
        h = hashlib.sha256()
        for s in (self.train, self.val, self.test):
            h.update(s.x.contiguous().numpy().tobytes())
            h.update(s.y.contiguous().numpy().tobytes())
        return h.hexdigest()


def split_three(x: torch.Tensor, y: torch.Tensor, sizes: tuple[int, int, int],
                seed: int) -> tuple[Split, Split, Split]:
    """Shuffle with `seed` and cut into train/val/test of the given sizes."""
    if sum(sizes) > len(y):
        raise UserError(f"splits {sizes} need {sum(sizes)} samples, the dataset has {len(y)}")
    order = torch.randperm(len(y), generator=torch.Generator().manual_seed(seed))
    a, b, c = sizes
    idx = (order[:a], order[a:a + b], order[a + b:a + b + c])
    return tuple(Split(x[i], y[i]) for i in idx)  # type: ignore[return-value]


def standardise(train: Split, *others: Split) -> None:
    """Scale features by train-split mean and std (in place), so no test statistics leak."""
    mean = train.x.mean(0, keepdim=True)
    std = train.x.std(0, keepdim=True).clamp_min(1e-6)
    for s in (train, *others):
        s.x = (s.x - mean) / std


def load_dataset(name: str, params: dict) -> DataBundle:
    entry = DATASETS.get(name)
    return entry.obj(entry.params(**params))
