"""Streamed splits (a Dataset read through a DataLoader) train and evaluate exactly as the same
data held in memory, whatever the number of decoding workers; bad samples are one line."""

from __future__ import annotations

import copy

import pytest
import torch

from compress.config import TrainConfig
from compress.core.loop import evaluate, fit
from compress.data.base import BadSample, DataBundle, Split, StreamSplit
from compress.errors import UserError
from compress.models.mlp import MLP


class TensorDataset(torch.utils.data.Dataset):
    """Samples of in-memory tensors; `augmented(seed)` adds noise drawn from (seed, index)."""

    def __init__(self, x, y, noise: float = 0.0, bad: int | None = None):
        self.x, self.y, self.noise, self.bad, self.seed = x, y, noise, bad, None

    def __len__(self):
        return len(self.y)

    def __getitem__(self, i):
        if i == self.bad:
            raise BadSample(f"sample {i} in /data/broken.png cannot be decoded")
        x = self.x[i]
        if self.seed is not None:
            g = torch.Generator().manual_seed(self.seed * 100_003 + i)
            x = x + self.noise * torch.randn(x.shape, generator=g)
        return x, self.y[i]

    def augmented(self, seed: int):
        view = copy.copy(self)
        view.seed = seed
        return view


def _bundle(stream: bool, workers: int = 0, noise: float = 0.0) -> DataBundle:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(300, 6, generator=g)
    y = (x[:, 0] * x[:, 1] > 0).long()
    parts = [(x[:200], y[:200]), (x[200:250], y[200:250]), (x[250:], y[250:])]
    if stream:
        splits = [StreamSplit(TensorDataset(a, b, noise), b, num_workers=workers) for a, b in parts]
    else:
        splits = [Split(a, b) for a, b in parts]
    return DataBundle("toy", *splits, num_classes=2, in_shape=(6,),
                      digest=(lambda: "toy") if stream else None)


def _train(data: DataBundle) -> tuple[dict, list[dict]]:
    torch.manual_seed(0)
    model = MLP(6, [16], 1)
    cfg = TrainConfig(lr=0.01, batch_size=32, duration="3ep")
    history = fit(model, data, cfg, seed=5)
    return model.state_dict(), history


@pytest.mark.parametrize("workers", [0, 2])
def test_a_streamed_split_trains_bit_identically_to_the_same_tensors(workers):
    ref_state, ref_hist = _train(_bundle(stream=False))
    state, hist = _train(_bundle(stream=True, workers=workers))
    assert all(torch.equal(ref_state[k], state[k]) for k in ref_state)
    assert hist == ref_hist


def test_evaluate_and_head_read_streams_in_order():
    mem, stream = _bundle(stream=False), _bundle(stream=True, workers=2)
    torch.manual_seed(0)
    model = MLP(6, [8], 1)
    assert evaluate(model, stream.test) == evaluate(model, mem.test)
    assert torch.equal(stream.test.head(7), mem.test.x[:7])
    x, y = stream.val.take([3, 1])
    assert torch.equal(x, mem.val.x[[3, 1]]) and torch.equal(y, mem.val.y[[3, 1]])


def test_training_augmentations_do_not_depend_on_the_number_of_workers():
    one, _ = _train(_bundle(stream=True, workers=0, noise=0.3))
    two, _ = _train(_bundle(stream=True, workers=2, noise=0.3))
    plain, _ = _train(_bundle(stream=False))
    assert all(torch.equal(one[k], two[k]) for k in one)
    assert not all(torch.equal(one[k], plain[k]) for k in one)  # the noise was applied


@pytest.mark.parametrize("workers", [0, 2])
def test_a_bad_sample_is_one_line_naming_it(workers):
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(20, 3, generator=g), torch.zeros(20, dtype=torch.long)
    split = StreamSplit(TensorDataset(x, y, bad=7), y, num_workers=workers)
    with pytest.raises(UserError) as err:
        list(split.chunks(8))
    assert str(err.value) == "sample 7 in /data/broken.png cannot be decoded"


def test_in_memory_fingerprint_hashes_the_tensors_and_streams_must_name_theirs():
    mem = _bundle(stream=False)
    assert len(mem.fingerprint()) == 64
    assert _bundle(stream=True).fingerprint() == "toy"
