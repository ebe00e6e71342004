"""`imagefolder`: ImageFolder layouts (split folders or fractions), decoding, mean/std,
seeded augmentation independent of workers, and the fingerprint of the files."""

from __future__ import annotations

import os
import shutil

import numpy as np
import pytest
import torch

from compress.data import load_dataset
from compress.data.images import load_image
from compress.errors import UserError
from tests.fixtures_data import write_digit_folder


def _load(root, **opts):
    return load_dataset("imagefolder", {"root": str(root), "num_workers": 0, **opts})


def test_split_folders_give_sorted_classes_images_and_labels(digit_folder):
    d = _load(digit_folder)
    assert d.classes == [str(i) for i in range(10)] and d.num_classes == 10
    assert d.in_shape == (3, 32, 32)
    assert (len(d.train), len(d.val), len(d.test)) == (180, 60, 60)
    for split in (d.train, d.val, d.test):
        assert torch.equal(torch.bincount(split.labels), torch.full((10,), len(split) // 10))
    x, y = d.test.take([0, 59])
    assert x.shape == (2, 3, 32, 32) and x.dtype == torch.float32 and y.tolist() == [0, 9]
    assert d.facts["layout"] == "splits" and d.facts["mean_std"].startswith("computed from 180")


def test_evaluation_batches_are_bounded_in_bytes(digit_folder, monkeypatch):
    from compress.data import imagefolder
    monkeypatch.setattr(imagefolder, "CHUNK_BYTES", 7 * 4 * 3 * 16 * 16 + 5)
    d = _load(digit_folder, image_size=16, mean=[0.5] * 3, std=[0.25] * 3)
    sizes = [len(y) for _, y in d.test.chunks(4096)]
    assert max(sizes) == 7 and sum(sizes) == len(d.test)
    assert torch.equal(torch.cat([y for _, y in d.test.chunks(4096)]), d.test.labels)
    monkeypatch.setattr(imagefolder, "EVAL_BATCH", 5)  # and at most EVAL_BATCH images
    d = _load(digit_folder, image_size=16, mean=[0.5] * 3, std=[0.25] * 3)
    assert max(len(y) for _, y in d.test.chunks(4096)) == 5


def test_computed_mean_and_std_normalise_the_training_images(digit_folder):
    d = _load(digit_folder)
    x = torch.cat([x for x, _ in d.train.chunks(64)])
    assert torch.allclose(x.mean((0, 2, 3)), torch.zeros(3), atol=1e-4)
    assert torch.allclose(x.std((0, 2, 3)), torch.ones(3), atol=1e-3)
    assert d.preprocess["mean"] == d.facts["mean"] and len(d.facts["std"]) == 3


def test_given_mean_and_std_are_used_as_they_are(digit_folder):
    d = _load(digit_folder, mean=[0.5, 0.5, 0.5], std=[0.25, 0.25, 0.25])
    x, _ = d.test.take([0])
    raw = load_image(d.test.dataset.path(0), {**d.preprocess, "mean": [0, 0, 0], "std": [1, 1, 1]})
    assert torch.allclose(x[0], (torch.from_numpy(raw) - 0.5) / 0.25)
    assert d.facts["mean_std"] == "given"


def test_flat_folder_is_split_per_class_by_the_fractions_and_the_seed(digit_folder_flat):
    a, b = _load(digit_folder_flat), _load(digit_folder_flat)
    assert (len(a.train), len(a.val), len(a.test)) == (220, 40, 40)
    for split in (a.train, a.val, a.test):
        assert sorted(set(split.labels.tolist())) == list(range(10))
    files = lambda d, s: list(getattr(d, s).dataset.rels)  # noqa: E731
    assert all(files(a, s) == files(b, s) for s in ("train", "val", "test"))
    other = _load(digit_folder_flat, seed=1)
    assert files(other, "test") != files(a, "test")
    assert not set(files(a, "test")) & set(files(a, "train"))
    bigger = _load(digit_folder_flat, val_fraction=0.3)
    assert len(bigger.val) == 90


def test_channels_and_image_size_convert_and_crop(digit_folder, digit_folder_gray):
    gray = _load(digit_folder, channels=1, image_size=24)
    assert gray.in_shape == (1, 24, 24) and gray.test.head(2).shape == (2, 1, 24, 24)
    rgb = _load(digit_folder_gray, channels=3, image_size=[16, 24])
    x = rgb.test.head(1)
    assert x.shape == (1, 3, 16, 24)
    assert torch.allclose(x[0, 0], x[0, 1]) and torch.allclose(x[0, 1], x[0, 2])


def test_evaluation_inputs_equal_the_deployment_helper(digit_folder):
    d = _load(digit_folder, image_size=20)
    x = d.val.head(3)
    for i in range(3):
        want = load_image(d.val.dataset.path(i), d.preprocess)
        assert np.array_equal(x[i].numpy(), want)


def test_standard_augmentation_is_seeded_per_sample_whatever_the_workers(digit_folder):
    d0 = _load(digit_folder, augment="standard")
    d2 = load_dataset("imagefolder", {"root": str(digit_folder), "augment": "standard",
                                      "num_workers": 2})
    idx = [torch.arange(0, 8), torch.arange(100, 108)]
    one = [x for x, _ in d0.train.batches(idx, augment=True, seed=3)]
    two = [x for x, _ in d2.train.batches(idx, augment=True, seed=3)]
    assert all(torch.equal(a, b) for a, b in zip(one, two))
    other = [x for x, _ in d0.train.batches(idx, augment=True, seed=4)]
    plain = [x for x, _ in d0.train.batches(idx)]
    assert not torch.equal(one[0], other[0]) and not torch.equal(one[0], plain[0])
    val = [x for x, _ in d0.val.batches(idx[:1], augment=True, seed=3)]
    assert torch.equal(val[0], d0.val.take(idx[0])[0])  # only training batches are augmented


def test_fingerprint_follows_the_files_not_the_loading_options(tmp_path):
    root = write_digit_folder(tmp_path / "d", per_class=5, fractions=(0.2, 0.2))
    params = lambda **o: {"name": "imagefolder", "root": str(root), **o}  # noqa: E731
    from compress.data.filebacked import files_fingerprint, identity_view
    first = files_fingerprint(params())
    assert files_fingerprint(params(num_workers=0, pin_memory=True)) == first
    assert identity_view(params(num_workers=7))["root"] == str(root)
    assert "num_workers" not in identity_view(params(num_workers=7))
    assert _load(root).fingerprint() == first
    victim = next((root / "train" / "3").iterdir())
    data = victim.read_bytes()
    stat = victim.stat()
    victim.write_bytes(data[:-1] + bytes([data[-1] ^ 1]))
    os.utime(victim, ns=(stat.st_atime_ns, stat.st_mtime_ns))  # same size and mtime: sampled?
    edited = files_fingerprint(params())
    victim.write_bytes(data)
    os.utime(victim, ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))  # touched
    assert files_fingerprint(params()) != first
    assert edited != first  # 50 files: all are in the content sample
    shutil.copy(victim, victim.with_name("extra.png"))
    assert files_fingerprint(params()) not in (first, edited)


def test_a_folder_without_split_folders_or_classes_is_one_line(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(UserError, match="holds no class folders"):
        _load(tmp_path / "empty")
    from compress.config import resolve
    with pytest.raises(UserError, match="data.root is required"):
        resolve({"data": {"name": "imagefolder"}})
    with pytest.raises(UserError, match="mean needs 1 value"):
        resolve({"data": {"name": "imagefolder", "root": ".", "channels": 1, "mean": [0, 0, 0],
                          "std": [1, 1, 1]}})


def test_one_command_fingerprints_a_folder_once(tmp_path, monkeypatch):
    from compress.data import filebacked, imagefolder
    root = write_digit_folder(tmp_path / "d", per_class=3, fractions=(0.34, 0.34))
    section = {"name": "imagefolder", "root": str(root)}
    scans = []
    monkeypatch.setattr(imagefolder, "scan", lambda r, real=imagefolder.scan: scans.append(r) or real(r))
    with filebacked.one_scan_per_command():
        first = filebacked.files_fingerprint(section)
        assert filebacked.files_fingerprint({**section, "num_workers": 0}) == first
    assert len(scans) == 1
    filebacked.files_fingerprint(section)  # outside a command: every call looks again
    assert len(scans) == 2
