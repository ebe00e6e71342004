import pytest
import torch
from compress.core.masking import MaskEnforcer, apply_masks, keep_top, prunable_parameters
from compress.core.masks import MaskSet
from compress.core import scoring
from compress.errors import UserError
from compress.models.mlp import MLP
from tests.checks import is_subset


def _net(seed=0):
    torch.manual_seed(seed)
    return MLP(10, [32, 16], 3)


def test_prunable_parameters_are_weights_only():
    names = set(prunable_parameters(_net()))
    assert names == {"layers.0.weight", "layers.1.weight", "layers.2.weight"}


def test_keep_top_is_exact_under_ties():
    scores = torch.tensor([1.0, 2.0, 2.0, 2.0, 0.5, 2.0])
    m = keep_top(scores, 3)
    assert m.dtype == torch.bool and int(m.sum()) == 3
    assert m.tolist() == [False, True, True, True, False, False]  # stable: earliest ties win
    assert int(keep_top(torch.zeros(7), 4).sum()) == 4


def _keep_top_by_sort(scores, k):
    mask = torch.zeros(scores.numel(), dtype=torch.bool)
    mask[torch.sort(scores.flatten(), descending=True, stable=True).indices[:k]] = True
    return mask.view_as(scores)


@pytest.mark.parametrize("levels", [3, 1000, None], ids=["heavy-ties", "some-ties", "no-ties"])
def test_keep_top_selection_equals_the_stable_sort(levels):
    g = torch.Generator().manual_seed(0)
    for shape in [(37,), (6, 5, 3, 3), (64, 129)]:
        x = torch.randn(shape, generator=g)
        if levels:
            x = torch.randint(0, levels, shape, generator=g).float()
        n = x.numel()
        for k in {0, 1, 2, n // 3, n // 2, n - 1, n}:
            assert torch.equal(keep_top(x, k), _keep_top_by_sort(x, k)), (shape, k)
    x = torch.tensor([0.1, float("nan"), 0.3, 0.2])
    assert torch.equal(keep_top(x, 2), _keep_top_by_sort(x, 2))


@pytest.mark.parametrize("density", [0.3, 0.07])
@pytest.mark.parametrize("scope", ["layerwise", "global"])
def test_select_keeps_exact_counts(density, scope):
    params = prunable_parameters(_net())
    masks = scoring.select(scoring.magnitude(params), density, scope)
    total = sum(p.numel() for p in params.values())
    if scope == "layerwise":
        for n, p in params.items():
            assert masks.kept()[n] == int(density * p.numel() + 0.5)
    else:
        assert sum(masks.kept().values()) == int(density * total + 0.5)
        flat_kept = torch.cat([p.detach().abs().flatten()[masks[n].flatten()] for n, p in params.items()])
        flat_cut = torch.cat([p.detach().abs().flatten()[~masks[n].flatten()] for n, p in params.items()])
        assert flat_kept.min() >= flat_cut.max()
    assert masks.density() == pytest.approx(sum(masks.kept().values()) / total)


def test_select_never_regrows():
    params = prunable_parameters(_net())
    first = scoring.select(scoring.magnitude(params), 0.5)
    second = scoring.select(scoring.uniform_random(params, 1), 0.2, current=first)
    assert is_subset(second, first)
    assert not is_subset(first, second)


@pytest.mark.parametrize("opt", ["sgd_momentum", "adam", "adamw"])
def test_pruned_weights_stay_exactly_zero(opt):
    model = _net()
    masks = scoring.select(scoring.uniform_random(prunable_parameters(model), 3), 0.3)
    enforcer = MaskEnforcer(masks)
    enforcer.bind(model)
    params = list(model.parameters())
    optim = {"sgd_momentum": lambda: torch.optim.SGD(params, lr=0.1, momentum=0.9, weight_decay=1e-2),
             "adam": lambda: torch.optim.Adam(params, lr=1e-2, weight_decay=1e-2),
             "adamw": lambda: torch.optim.AdamW(params, lr=1e-2, weight_decay=1e-1)}[opt]()
    x, y = torch.randn(64, 10), torch.randint(0, 3, (64,))
    for _ in range(50):
        optim.zero_grad()
        torch.nn.functional.cross_entropy(model(x), y).backward()
        enforcer.mask_grads()
        optim.step()
        enforcer.mask_weights()
    named = dict(model.named_parameters())
    for n, m in masks.items():
        assert torch.all(named[n][~m] == 0.0)
        assert torch.count_nonzero(named[n][m]) == int(m.sum())  # survivors did train
    # tightening the mask resets optimizer state of newly removed weights
    tighter = masks & scoring.select(scoring.magnitude(named), 0.5)
    enforcer.update(tighter, optim)
    for n, m in tighter.items():
        for v in optim.state[named[n]].values():
            if torch.is_tensor(v) and v.shape == m.shape:
                assert torch.all(v[~m] == 0)


def test_maskset_roundtrip_and_sha_check(tmp_path):
    masks = scoring.select(scoring.magnitude(prunable_parameters(_net())), 0.25)
    masks.save(tmp_path, method="magnitude")
    back = MaskSet.load(tmp_path)
    assert back.equal(masks) and back.density() == pytest.approx(masks.density())
    raw = (tmp_path / "masks.safetensors").read_bytes()
    (tmp_path / "masks.safetensors").write_bytes(raw[:-1] + bytes([raw[-1] ^ 1]))
    with pytest.raises(UserError, match="sha256"):
        MaskSet.load(tmp_path)
    with pytest.raises(UserError, match="no mask set"):
        MaskSet.load(tmp_path / "nowhere")


def test_maskset_rejects_non_boolean():
    with pytest.raises(TypeError):
        MaskSet({"w": torch.ones(3)})


def test_apply_masks_zeroes():
    model = _net()
    masks = scoring.select(scoring.magnitude(prunable_parameters(model)), 0.1)
    apply_masks(model, masks)
    for n, p in prunable_parameters(model).items():
        assert torch.count_nonzero(p) == masks.kept()[n]
