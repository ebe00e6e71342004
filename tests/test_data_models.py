import pytest
import torch

from compress.data import load_dataset
from compress.errors import UserError
from compress.models import build_model
from compress.registry import DATASETS, MODELS

SMALL = {"xor": {"k": 2, "p": 5, "n_train": 100, "n_val": 50, "n_test": 50}, "digits": {}}


@pytest.mark.parametrize("name", DATASETS.names())
def test_every_dataset_is_deterministic_and_well_formed(name):
    if DATASETS.get(name).defaults.get("needs_files"):
        pytest.skip("reads user files: covered with files on disk by tests/test_data_vision.py, "
                    "test_data_imagefolder.py, test_data_table.py")
    a, b = load_dataset(name, SMALL.get(name, {})), load_dataset(name, SMALL.get(name, {}))
    assert a.fingerprint() == b.fingerprint()
    for split in (a.train, a.val, a.test):
        assert split.x.dtype == torch.float32 and split.y.dtype == torch.long
        assert split.x.shape[1:] == a.in_shape and len(split) > 0
        assert int(split.y.min()) >= 0 and int(split.y.max()) < a.num_classes
    assert len(a.train) + len(a.val) + len(a.test) <= 1797 or name != "digits"


def test_xor_labels_are_the_parity_of_the_first_k():
    d = load_dataset("xor", {"k": 3, "p": 8, "n_train": 500, "n_val": 10, "n_test": 10})
    x, y = d.train.x, d.train.y
    assert x.min() >= -1 and x.max() <= 1
    assert torch.equal(y, (x[:, :3].prod(1) > 0).long())
    other = load_dataset("xor", {"k": 3, "p": 8, "n_train": 500, "n_val": 10, "n_test": 10, "seed": 1})
    assert other.fingerprint() != d.fingerprint()


def test_digits_is_standardised_on_train():
    d = load_dataset("digits", {})
    assert d.num_classes == 10 and d.in_shape == (1, 8, 8) and d.train.x.shape[1:] == (1, 8, 8)
    assert d.train.x.mean().abs() < 0.05


def test_too_many_samples_is_a_user_error():
    from compress.config import resolve
    with pytest.raises(UserError, match="cannot exceed"):
        resolve({"data": {"name": "xor", "k": 9, "p": 3}})


@pytest.mark.parametrize("name", MODELS.names())
def test_every_model_builds_and_runs(name):
    shape = tuple(MODELS.get(name).defaults.get("example_shape", (12,)))
    for classes, width in ((2, 1), (10, 10)):
        m = build_model(name, {}, shape, classes)
        assert m(torch.randn(3, *shape)).shape == (3, width)


@pytest.mark.parametrize("model", ["conv2", "resnet20", "mlp"])
def test_digits_are_images_that_conv_nets_and_mlps_both_take(model):
    import torch
    from compress.models import build_model
    d = load_dataset("digits", {})
    net = build_model(model, {}, d.in_shape, d.num_classes)
    assert net(d.test.x[:4]).shape == (4, 10)
