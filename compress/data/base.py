"""Datasets as splits that hand out batches by index: in memory, or streamed from files.

Everything above the data layer reads a split through one small interface, so nothing assumes
the whole set is a tensor:

    len(split)                      samples
    split.labels                    int64 class labels of every sample (cheap: no inputs read)
    split.batches(index_lists)      (x, y) per list of sample indices, in that order
    split.take(indices)             one such batch
    split.head(n)                   the first n inputs (examples for tracing, export, parity)

`Split` holds tensors in memory (the built-in datasets: indexing is the whole cost, as before).
`StreamSplit` wraps a `torch.utils.data.Dataset` and reads its batches through a `DataLoader`
(`num_workers` processes decoding ahead, optional pinned memory), so a folder of millions of
images trains in bounded memory. Training asks for `augment=True` batches: a stream's dataset
may then apply random transforms, seeded per (epoch seed, sample index), so the result does
not depend on how many workers decode.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from typing import Callable, Iterable, Iterator, Sequence

import torch

from compress.errors import UserError
from compress.registry import DATASETS

Batch = tuple[torch.Tensor, torch.Tensor]


class SplitBase:
    """What every split offers on top of `batches` (see the module docstring)."""

    labels: torch.Tensor

    def __len__(self) -> int:
        return len(self.labels)

    def batches(self, index_lists: Iterable[torch.Tensor], *, augment: bool = False,
                seed: int = 0) -> Iterator[Batch]:
        raise NotImplementedError

    def take(self, idx: torch.Tensor | Sequence[int]) -> Batch:
        idx = torch.as_tensor(idx, dtype=torch.long)
        return next(iter(self.batches([idx])))

    def head(self, n: int) -> torch.Tensor:
        return self.take(torch.arange(min(n, len(self))))[0]

    def chunks(self, size: int, rows: slice | None = None) -> Iterator[Batch]:
        """The split (or `rows` of it) in order, `size` samples at a time."""
        start, stop, _ = (rows or slice(None)).indices(len(self))
        return self.batches(torch.arange(i, min(i + size, stop)) for i in range(start, stop, size))


@dataclass
class Split(SplitBase):
    """A split held in memory as tensors."""

    x: torch.Tensor
    y: torch.Tensor  # int64 class labels

    @property
    def labels(self) -> torch.Tensor:  # type: ignore[override]
        return self.y

    def batches(self, index_lists: Iterable[torch.Tensor], *, augment: bool = False,
                seed: int = 0) -> Iterator[Batch]:
        for idx in index_lists:
            yield self.x[idx], self.y[idx]

    def head(self, n: int) -> torch.Tensor:
        return self.x[:n]

    def chunks(self, size: int, rows: slice | None = None) -> Iterator[Batch]:
        start, stop, _ = (rows or slice(None)).indices(len(self))
        for i in range(start, stop, size):  # slices: no copy of an in-memory split
            yield self.x[i:min(i + size, stop)], self.y[i:min(i + size, stop)]


class StreamSplit(SplitBase):
    """A split read from a `torch.utils.data.Dataset` through a `DataLoader`.

    `dataset[i]` returns (input tensor, label); `dataset.augmented(seed)` (optional) returns a
    view of it that applies training-time random transforms seeded by (seed, i).
    """

    def __init__(self, dataset, labels: torch.Tensor, num_workers: int = 0,
                 pin_memory: bool = False, max_chunk: int | None = None):
        self.dataset, self.labels = dataset, torch.as_tensor(labels, dtype=torch.long)
        self.num_workers, self.pin_memory = num_workers, pin_memory
        self.max_chunk = max_chunk  # largest evaluation batch (large images: bounded memory)

    def chunks(self, size: int, rows: slice | None = None) -> Iterator[Batch]:
        return super().chunks(min(size, self.max_chunk or size), rows)

    def batches(self, index_lists: Iterable[torch.Tensor], *, augment: bool = False,
                seed: int = 0) -> Iterator[Batch]:
        from torch.utils.data import DataLoader
        lists = [[int(i) for i in idx] for idx in index_lists]
        if not lists:
            return iter(())
        source = self.dataset.augmented(seed) if augment and hasattr(self.dataset, "augmented") \
            else self.dataset
        loader = DataLoader(source, batch_sampler=lists, num_workers=self.num_workers,
                            pin_memory=self.pin_memory,
                            persistent_workers=False, worker_init_fn=_one_thread)
        return _user_errors(loader)


def _one_thread(_: int) -> None:
    # Decoding workers must not each start a thread pool of torch's on a shared machine.
    torch.set_num_threads(1)


def _user_errors(loader) -> Iterator[Batch]:
    """Batches of `loader`; a bad sample (raised here or in a worker, where DataLoader re-raises
    it with the worker's traceback as text) becomes its one-line UserError."""
    try:
        yield from loader
    except Exception as e:
        message, marker = str(e), BadSample.MARKER
        if marker not in message:
            raise
        line = message[message.rindex(marker) + len(marker):].splitlines()[0].strip()
        raise UserError(line) from None


class BadSample(UserError):
    """A sample that cannot be read (corrupt image, ...): named in one line."""

    MARKER = "compress-bad-sample: "

    def __init__(self, message: str):
        super().__init__(message)
        self.args = (message,)

    def __str__(self) -> str:  # survives DataLoader's re-raise as text, found by the marker
        return f"{self.MARKER}{self.args[0]}"

    def __reduce__(self):
        return (BadSample, self.args)


@dataclass
class DataBundle:
    """A dataset's three splits and what a model needs to know about its inputs and outputs.

    `fingerprint` identifies the exact data a run saw: a sha256 of the tensors for in-memory
    data, a cheap digest of file list, sizes, times and sampled contents for files (set by the
    loader). `preprocess` describes a transform the data layer applied to raw inputs that a
    deployed model must apply too (tables: standardisation, one-hot encoding), or None.
    """

    name: str
    train: SplitBase
    val: SplitBase
    test: SplitBase
    num_classes: int
    in_shape: tuple[int, ...]
    preprocess: dict | None = None
    classes: list[str] | None = None
    facts: dict = field(default_factory=dict)  # recorded with the stage (e.g. computed mean/std)
    digest: Callable[[], str] | None = None
    raw_rows: Callable[[str, slice], dict] | None = None  # tables: see compress.data.table
    _fingerprint: str | None = field(default=None, repr=False, compare=False)

    def fingerprint(self) -> str:
        if self._fingerprint is None:  # every stage records it: hash the tensors once
            self._fingerprint = self.digest() if self.digest is not None else self._tensor_digest()
        return self._fingerprint

    def _tensor_digest(self) -> str:
        h = hashlib.sha256()
        for s in (self.train, self.val, self.test):
            if not isinstance(s, Split):
                raise TypeError(f"dataset {self.name} streams its splits and must set digest")
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
