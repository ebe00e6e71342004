import math

import pytest
import torch

from compress.core.metrics import classification_metrics, roc_auc


@pytest.mark.parametrize("levels", [None, 4], ids=["continuous", "tied"])
def test_roc_auc_matches_sklearn(levels):
    from sklearn.metrics import roc_auc_score
    g = torch.Generator().manual_seed(3)
    y = torch.randint(0, 2, (501,), generator=g)
    s = torch.randn(501, generator=g) + y * 0.7
    if levels:
        s = torch.round(s * levels / 4)
    assert roc_auc(s, y) == pytest.approx(roc_auc_score(y.numpy(), s.numpy()), abs=1e-12)


def test_roc_auc_is_nan_with_one_class():
    assert math.isnan(roc_auc(torch.randn(5), torch.ones(5)))


def test_accuracy_is_an_exact_fraction():
    y = torch.arange(1000) % 10
    logits = torch.nn.functional.one_hot(y, 10).float()
    logits[:46] = torch.nn.functional.one_hot((y[:46] + 1) % 10, 10).float()
    m = classification_metrics(logits, y)
    assert m["accuracy"] == 0.954  # not float32's 0.953999996...
    binary = classification_metrics(torch.tensor([[2.0], [-1.0], [0.5]]), torch.tensor([1, 1, 0]))
    assert binary["accuracy"] == 1 / 3 and binary["auc"] == 0.5
