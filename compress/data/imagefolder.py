"""`imagefolder`: torchvision's ImageFolder layout (one folder per class), streamed from disk.

    data.root/train/<class>/*.png, data.root/val/<class>/..., data.root/test/<class>/...
or  data.root/<class>/*.png   (split per class by val_fraction / test_fraction, seeded)

Classes are the sorted class-folder names, the same in every split. Images are decoded when a
batch needs them (compress.data.images), by `num_workers` DataLoader processes, so memory does
not grow with the number of images (the file list is one compact byte array).

Checked up front (cheap for millions of files: one directory walk with a stat per file):
the layout, class folders without images, empty (0-byte) files, two or more classes present in
every split, and the headers of a seeded sample of files per split; the mean/std sample is
decoded in full. `verify: all` decodes every image before training. Otherwise a corrupt
image is found when a batch reads it, and the run stops with one line naming the file.
"""

from __future__ import annotations

import copy
import os
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar, Literal

import numpy as np
import torch
from pydantic import Field, field_validator, model_validator

from compress.data.base import DataBundle, StreamSplit
from compress.data.filebacked import StreamOptions
from compress.data.files import FileStat, files_digest, stat_file
from compress.data.images import (IMAGE_EXTENSIONS, center_box, channel_tensor, image_size,
                                  normalise, open_image, random_box, sample_rng, to_tensor)
from compress.data.splitting import SPLITS, Fractions, check_classes, stratified
from compress.errors import UserError
from compress.registry import register_dataset

STATS_SAMPLE = 512  # train images decoded to compute mean/std when they are not given
# Evaluation batches: at most EVAL_BATCH images and CHUNK_BYTES of inputs, so the memory of a
# batch (its activations above all) does not grow with the size of the val or test split.
EVAL_BATCH = 256
CHUNK_BYTES = 64 << 20
HEADER_SAMPLE = 32  # files per split whose header is read up front


class ImageFolderParams(Fractions, StreamOptions):
    root: str | None = Field(None, description="required: the folder holding one folder per "
                             "class, or train/, val/ and test/ folders that each do")
    image_size: int | list[int] | None = Field(
        None, description="output size, N or [H, W]: images are resized to cover it and "
                          "center-cropped; default: the first training image's size")
    channels: Literal[1, 3] = Field(3, description="1 (grayscale) or 3 (RGB): images converted")
    mean: list[float] | None = Field(None, description="per-channel mean of [0, 1] pixels; "
                                     "default: computed from a seeded sample of train images")
    std: list[float] | None = Field(None, description="per-channel std; default: computed "
                                    "with the mean")
    augment: Literal["none", "standard"] = Field(
        "none", description="standard: random resized crop + horizontal flip (training only)")
    crop_scale: tuple[float, float] = Field(
        (0.08, 1.0), description="augment: area fraction range of the random crop")
    verify: Literal["sample", "all"] = Field(
        "sample", description="check up front: sample = headers of a few files per split; "
                              "all = decode every image")

    performance_keys: ClassVar[tuple[str, ...]] = (*StreamOptions.performance_keys, "verify")

    @field_validator("root")
    @classmethod
    def _absolute(cls, value: str | None) -> str | None:
        # Recorded absolute, so later commands (export --from, resume) find it from any folder.
        return str(Path(os.path.expanduser(value)).resolve()) if value and value.strip() else None

    @model_validator(mode="after")
    def _consistent(self):
        if self.root is None:
            raise ValueError("data.root is required: the folder holding the class folders "
                             "(or train/, val/ and test/ folders)")
        size = self.size()
        if size is not None and (len(size) != 2 or min(size) < 1):
            raise ValueError(f"image_size must be N or [H, W] of positive sizes, got {self.image_size}")
        for key in ("mean", "std"):
            value = getattr(self, key)
            if value is not None and len(value) != self.channels:
                raise ValueError(f"{key} needs {self.channels} value(s), one per channel; got {value}")
        if (self.mean is None) != (self.std is None):
            raise ValueError("give both mean and std, or neither (then both are computed)")
        if self.std is not None and min(self.std) <= 0:
            raise ValueError(f"std must be positive, got {self.std}")
        lo, hi = self.crop_scale
        if not 0 < lo <= hi <= 1:
            raise ValueError(f"crop_scale must be 0 < min <= max <= 1, got {list(self.crop_scale)}")
        return self

    def size(self) -> tuple[int, int] | None:
        s = self.image_size
        return None if s is None else ((s, s) if isinstance(s, int) else tuple(s))  # type: ignore

    def files_digest(self) -> str:
        layout = scan(Path(self.root or ""))
        return files_digest(layout.root, layout.stats())


# ------------------------------------------------------------------------------ layout
@dataclass
class Layout:
    root: Path
    kind: Literal["splits", "fractions"]
    sources: dict[str, dict[str, list[FileStat]]]  # split (or "all") -> class -> files

    def stats(self) -> list[FileStat]:
        return [f for classes in self.sources.values() for files in classes.values() for f in files]


def scan(root: Path) -> Layout:
    """The folder's layout and files (UserError for a missing root or split folder, a class
    folder without images, an empty file)."""
    if not root.is_dir():
        what = "is not a folder" if root.exists() else "does not exist"
        raise UserError(f"data.root {root} {what}; point it at a folder of class folders (or of "
                        "train/, val/ and test/ folders that hold them)")
    present = [s for s in SPLITS if (root / s).is_dir()]
    if not present:
        return Layout(root, "fractions", {"all": _classes(root, "")})
    missing = [s for s in SPLITS if s not in present]
    if missing:
        raise UserError(f"{root} has {'/, '.join(present)}/ but no {'/, '.join(missing)}/: with "
                        "split folders, train/, val/ and test/ are all needed (or put the class "
                        "folders directly in data.root to split them by data.val_fraction and "
                        "data.test_fraction)")
    return Layout(root, "splits", {s: _classes(root, s) for s in SPLITS})


def _classes(root: Path, rel: str) -> dict[str, list[FileStat]]:
    folder = root / rel
    names = sorted(e.name for e in os.scandir(folder) if e.is_dir() and not e.name.startswith("."))
    if not names:
        raise UserError(f"{folder} holds no class folders (ImageFolder layout: one folder per "
                        "class with its images inside)")
    out = {}
    for name in names:
        files = _images(root, f"{rel}/{name}" if rel else name)
        if not files:
            raise UserError(f"class folder {folder / name} holds no images "
                            f"({', '.join(sorted(IMAGE_EXTENSIONS))}); add images or remove it")
        out[name] = files
    return out


def _images(root: Path, rel: str) -> list[FileStat]:
    """Image files under root/rel (recursively, hidden entries skipped), sorted by path."""
    out, stack = [], [rel]
    while stack:
        here = stack.pop()
        with os.scandir(root / here) as entries:
            for e in entries:
                if e.name.startswith("."):
                    continue
                path = f"{here}/{e.name}"
                if e.is_dir():
                    stack.append(path)
                elif os.path.splitext(e.name)[1].lower() in IMAGE_EXTENSIONS:
                    stat = stat_file(root, path, e)
                    if stat.size == 0:
                        raise UserError(f"image file {root / path} is empty (0 bytes); remove "
                                        "or replace it")
                    out.append(stat)
    return sorted(out, key=lambda s: s.rel)


# ------------------------------------------------------------------------------ dataset
class ImageFiles(torch.utils.data.Dataset):
    """Images decoded on demand: (C, H, W) float32 normalised, and the class index."""

    def __init__(self, root: Path, rels: np.ndarray, labels: np.ndarray, size: tuple[int, int],
                 channels: int, mean, std, crop_scale: tuple[float, float] | None = None):
        self.root, self.rels, self.labels = str(root), rels, labels
        self.size, self.channels, self.mean, self.std = size, channels, mean, std
        self.crop_scale, self.seed = crop_scale, None
        self._mean, self._std = channel_tensor(mean), channel_tensor(std)  # built once

    def __len__(self) -> int:
        return len(self.labels)

    def path(self, i: int) -> Path:
        return Path(self.root) / self.rels[i].decode()

    def __getitem__(self, i: int):
        img = open_image(self.path(i), self.channels)
        w, h = img.size
        if self.seed is None:
            x = to_tensor(img, self.size, center_box(w, h, *self.size))
        else:
            rng = sample_rng(self.seed, i)
            box = random_box(w, h, rng, self.crop_scale)
            x = to_tensor(img, self.size, box, flip=bool(rng.random() < 0.5))
        return normalise(x, self._mean, self._std), int(self.labels[i])

    def augmented(self, seed: int) -> "ImageFiles":
        if self.crop_scale is None:
            return self
        view = copy.copy(self)
        view.seed = seed
        return view


# ------------------------------------------------------------------------------ loader
@register_dataset("imagefolder", params=ImageFolderParams,
                  summary="your images in torchvision's ImageFolder layout (data.root), "
                          "streamed from disk", defaults={"needs_files": True})
def load_imagefolder(p: ImageFolderParams) -> DataBundle:
    layout = scan(Path(p.root or ""))
    classes, files = _split_files(layout, p)
    check_classes(classes, {s: {classes[c] for c in np.unique(labels)}
                            for s, (_, labels) in files.items()}, f"image folder {layout.root}")
    size = p.size() or image_size(layout.root / files["train"][0][0].decode())
    plain = {s: ImageFiles(layout.root, rels, labels, size, p.channels, [0.0] * p.channels,
                           [1.0] * p.channels) for s, (rels, labels) in files.items()}
    _verify(plain, p)
    given = p.mean is not None
    mean, std = (p.mean, p.std) if given else pixel_stats(plain["train"], p)
    scale = p.crop_scale if p.augment == "standard" else None
    chunk = max(1, min(EVAL_BATCH, CHUNK_BYTES // (4 * p.channels * size[0] * size[1])))
    splits = {s: StreamSplit(ImageFiles(layout.root, rels, labels, size, p.channels, mean, std,
                                        scale if s == "train" else None),
                             torch.from_numpy(labels), p.num_workers, p.pin_memory, chunk)
              for s, (rels, labels) in files.items()}
    preprocess = {"kind": "image", "size": list(size), "channels": p.channels, "mean": mean,
                  "std": std, "resize": "cover, center crop, bilinear", "scale": 1 / 255,
                  "classes": classes}
    facts = {"layout": layout.kind, "classes": classes, "image_size": list(size),
             "channels": p.channels, "mean": mean, "std": std,
             "mean_std": "given" if given else f"computed from {min(STATS_SAMPLE, len(splits['train']))} "
                                               f"train images (seed {p.seed})",
             "samples": {s: len(splits[s]) for s in SPLITS}}
    digest = files_digest(layout.root, layout.stats())  # now: the file list is freed after
    return DataBundle(f"imagefolder:{layout.root.name}", splits["train"], splits["val"],
                      splits["test"], num_classes=len(classes), in_shape=(p.channels, *size),
                      preprocess=preprocess, classes=classes, facts=facts,
                      digest=lambda: digest)


def _split_files(layout: Layout, p: ImageFolderParams):
    """Class names, and per split the files (a compact byte array) and their labels."""
    classes = sorted({c for source in layout.sources.values() for c in source})
    index = {c: i for i, c in enumerate(classes)}

    def arrays(source: dict[str, list[FileStat]]) -> tuple[np.ndarray, np.ndarray]:
        rels = [f.rel.encode() for c in sorted(source) for f in source[c]]
        labels = [index[c] for c in sorted(source) for _ in source[c]]
        return np.array(rels, dtype=np.bytes_), np.array(labels, dtype=np.int64)

    if layout.kind == "splits":
        return classes, {s: arrays(layout.sources[s]) for s in SPLITS}
    rels, labels = arrays(layout.sources["all"])
    if len(classes) < 2:
        check_classes(classes, {}, f"image folder {layout.root}")
    picks = stratified(labels, classes, p.val_fraction, p.test_fraction, p.seed)
    return classes, {s: (rels[picks[s]], labels[picks[s]]) for s in SPLITS}


def _verify(plain: dict[str, ImageFiles], p: ImageFolderParams) -> None:
    """Headers of a seeded sample of each split (or, with verify: all, every image decoded)."""
    if p.verify == "all":
        for ds in plain.values():
            for _ in StreamSplit(ds, torch.from_numpy(ds.labels), p.num_workers).chunks(256):
                pass
        return
    rng = np.random.default_rng(p.seed)
    for ds in plain.values():
        for i in rng.choice(len(ds), min(HEADER_SAMPLE, len(ds)), replace=False):
            image_size(ds.path(int(i)))


def pixel_stats(train: ImageFiles, p: ImageFolderParams) -> tuple[list[float], list[float]]:
    """Per-channel mean and std of [0, 1] pixels over a seeded sample of training images."""
    rng = np.random.default_rng(p.seed)
    picks = np.sort(rng.choice(len(train), min(STATS_SAMPLE, len(train)), replace=False))
    split = StreamSplit(train, torch.from_numpy(train.labels), p.num_workers)
    total = torch.zeros(p.channels, dtype=torch.float64)
    squares, count = torch.zeros_like(total), 0
    for x, _ in split.batches(torch.from_numpy(picks[i:i + 64]) for i in range(0, len(picks), 64)):
        x = x.double()
        total += x.sum((0, 2, 3))
        squares += (x * x).sum((0, 2, 3))
        count += x.numel() // p.channels
    mean = total / count
    std = (squares / count - mean * mean).clamp_min(0).sqrt()
    std = torch.where(std < 1e-6, torch.ones_like(std), std)  # a constant channel: leave it
    return [float(v) for v in mean], [float(v) for v in std]
