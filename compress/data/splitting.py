"""Splitting labelled files or rows into train/val/test, and the class checks every split must
pass (shared by image folders and tables)."""

from __future__ import annotations

from typing import Sequence

import numpy as np
from pydantic import BaseModel, Field, model_validator

from compress.vocab import OPTIONS

from compress.errors import UserError

SPLITS = ("train", "val", "test")


class Fractions(BaseModel):
    """How one source is cut into train/val/test when the splits are not given separately."""

    model_config = OPTIONS
    val_fraction: float = Field(0.15, gt=0, lt=1, description="share of each class held out "
                                "as val (when no separate val split is given)")
    test_fraction: float = Field(0.15, gt=0, lt=1, description="share of each class held out "
                                 "as test (when no separate test split is given)")
    seed: int = Field(0, description="which samples land in which split")

    @model_validator(mode="after")
    def _leaves_training_data(self):
        if self.val_fraction + self.test_fraction >= 1:
            raise ValueError(f"val_fraction + test_fraction = "
                             f"{self.val_fraction + self.test_fraction:g} leaves nothing to "
                             "train on; keep their sum below 1")
        return self


def stratified(labels: np.ndarray, classes: Sequence[str], val_fraction: float,
               test_fraction: float, seed: int) -> dict[str, np.ndarray]:
    """Sample indices of each split: every class cut by the fractions (at least one sample of
    each class in each split), shuffled by `seed`; indices ascending within a split."""
    rng = np.random.default_rng(seed)
    parts: dict[str, list[np.ndarray]] = {s: [] for s in SPLITS}
    for c, name in enumerate(classes):
        idx = np.flatnonzero(labels == c)
        n = len(idx)
        n_val, n_test = max(1, round(n * val_fraction)), max(1, round(n * test_fraction))
        if n - n_val - n_test < 1:
            raise UserError(f"class {name!r} has {n} sample(s): too few to put one in each of "
                            "train, val and test; add samples or give the splits separately")
        idx = idx[rng.permutation(n)]
        parts["val"].append(idx[:n_val])
        parts["test"].append(idx[n_val:n_val + n_test])
        parts["train"].append(idx[n_val + n_test:])
    return {s: np.sort(np.concatenate(p)) for s, p in parts.items()}


def check_classes(classes: Sequence[str], present: dict[str, set[str]], what: str) -> None:
    """At least two classes, and every split has every class (one line naming what is
    missing otherwise). `present` maps each split to the class names it holds."""
    if len(classes) < 2:
        found = f"only {classes[0]!r}" if classes else "none"
        raise UserError(f"{what} has fewer than two classes ({found}); a classifier needs at "
                        "least two")
    for split, names in present.items():
        missing = [c for c in classes if c not in names]
        if missing:
            shown = ", ".join(repr(c) for c in missing[:5]) + (" ..." if len(missing) > 5 else "")
            raise UserError(f"the {split} split of {what} has no samples of class {shown}; "
                            "every split needs every class")
