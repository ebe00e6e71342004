"""CIFAR-10 read with torchvision.datasets.CIFAR10 from `data.root` (never downloaded).

Expects `<root>/cifar-10-batches-py/` (the extracted cifar-10-python.tar.gz); torchvision checks
every batch file's md5. Images become (3, 32, 32) float32 tensors in memory, scaled to [0, 1]
and normalised per channel with the standard CIFAR-10 statistics (mean 0.4914/0.4822/0.4465,
std 0.2470/0.2435/0.2616 over all training pixels). No augmentation: the splits are fixed
tensors (no random crops or flips), so accuracies sit below the augmented numbers in papers.
Splits: `n_val` of the 50k training images, chosen by `seed`, are held out as val; the
official 10k test batch is the test split.
"""

from __future__ import annotations

from typing import ClassVar

from pathlib import Path

import torch

from compress.data.base import DataBundle, Split
from compress.data.mnist import RootParams, holdout, to_float, torchvision_datasets
from compress.errors import UserError
from compress.registry import register_dataset

CIFAR10_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR10_STD = (0.2470, 0.2435, 0.2616)
CIFAR10_SHAPE = (3, 32, 32)
CIFAR10_FOLDER = "cifar-10-batches-py"
CIFAR10_FILES = tuple(f"data_batch_{i}" for i in range(1, 6)) + ("test_batch", "batches.meta")


class Cifar10Params(RootParams):
    root_help: ClassVar[str] = f"the folder that holds {CIFAR10_FOLDER} (torchvision layout)"

    def data_files(self) -> list[Path]:
        return [self.root_path() / CIFAR10_FOLDER / f for f in CIFAR10_FILES]

    def missing_message(self) -> str:
        return cifar10_missing_message(self.root_path())
    files: ClassVar[tuple[str, ...]] = tuple(f"{CIFAR10_FOLDER}/{f}" for f in CIFAR10_FILES)


def cifar10_missing_message(root) -> str:
    folder = root / CIFAR10_FOLDER
    missing = [f for f in CIFAR10_FILES if not (folder / f).is_file()]
    if not missing:
        return (f"CIFAR-10 files in {folder} failed torchvision's md5 check (corrupted, or not the "
                "official python version): re-extract cifar-10-python.tar.gz there")
    hint = ""
    if (root / "cifar-10-python.tar.gz").is_file():
        hint = f" (the archive is there: tar xzf cifar-10-python.tar.gz -C {root})"
    elif root.name == CIFAR10_FOLDER:
        hint = f" (data.root is the folder that contains {CIFAR10_FOLDER}/, e.g. {root.parent})"
    return (f"CIFAR-10 not found: torchvision expects {folder}/ with data_batch_1..5, test_batch "
            f"and batches.meta; missing: {', '.join(missing)}{hint}; downloads are disabled")


@register_dataset("cifar10", params=Cifar10Params,
                  summary="CIFAR-10 from data.root in torchvision's layout (50k train - n_val, "
                          "n_val val, 10k test; no augmentation; never downloads)",
                  defaults={"needs_files": True})
def load_cifar10(p: Cifar10Params) -> DataBundle:
    root = p.root_path()
    tvd = torchvision_datasets()
    try:
        sets = [tvd.CIFAR10(str(root), train=flag, download=False) for flag in (True, False)]
    except RuntimeError:
        raise UserError(cifar10_missing_message(root)) from None
    except (OSError, EOFError, KeyError, ValueError, TypeError) as e:
        raise UserError(f"CIFAR-10 files in {root / CIFAR10_FOLDER} could not be read "
                        f"({type(e).__name__}: {e})") from None

    def tensors(ds) -> tuple[torch.Tensor, torch.Tensor]:
        # torchvision holds (N, 32, 32, 3) uint8; keep uint8 until the split is cut
        x = torch.from_numpy(ds.data).permute(0, 3, 1, 2)
        return x, torch.as_tensor(ds.targets, dtype=torch.long)

    def split(x: torch.Tensor, y: torch.Tensor) -> Split:
        return Split(to_float(x, CIFAR10_SHAPE, CIFAR10_MEAN, CIFAR10_STD), y.clone())

    (tx, ty), (vx, vy) = holdout(*tensors(sets[0]), p.n_val, p.seed, "the CIFAR-10 training set")
    return DataBundle("cifar10", split(tx, ty), split(vx, vy), split(*tensors(sets[1])),
                      num_classes=10, in_shape=CIFAR10_SHAPE)
