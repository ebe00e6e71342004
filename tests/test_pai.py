"""Pruning at init (snip, grasp, synflow): exact counts, init lineage, and the score formulas."""

import pytest
import torch
from torch import nn

from compress.config import resolve
from compress.core import scoring
from compress.methods.pai import scores as init_scores
from compress.core.loop import fit
from compress.core.masking import prunable_parameters
from compress.core.masks import MaskSet
from compress.core.metrics import loss_fn
from compress.errors import UserError
from compress.methods.pai import method as pai
from compress.methods.base import PruneContext
from compress.registry import METHODS
from compress.stages.runner import build, load_data
from tests.checks import is_subset

TINY = {
    "data": {"name": "xor", "k": 2, "p": 6, "n_train": 256, "n_val": 128, "n_test": 128},
    "model": {"name": "mlp", "hidden": [24, 12]},
    "train": {"duration": "2ep", "batch_size": 64},
}
METHOD_NAMES = ["snip", "grasp", "synflow"]
FAST = {"synflow": {"rounds": 10}}


def _setup(name, seed=0, model=None, **opts):
    cfg = resolve(TINY, {"method": {"name": name, **FAST.get(name, {}), **opts}}, seed=seed)
    data = load_data(cfg)
    model = model if model is not None else build(cfg, data)
    init = {k: v.clone() for k, v in model.state_dict().items()}
    fit(model, data, cfg.train, seed=cfg.seed)  # dense pretraining: the weights pai ignores
    pretrained = {k: v.clone() for k, v in model.state_dict().items()}
    ctx = PruneContext(model, data, cfg.train, MaskSet.ones_like(prunable_parameters(model)),
                       cfg.seed, progress=False, init=init, dense_train=cfg.train,
                       dense_seed=cfg.seed, build=lambda o: build(cfg, data, seed_offset=o))
    return cfg, ctx, init, pretrained


def _run(name, seed=0, **opts):
    cfg, ctx, init, pretrained = _setup(name, seed, **opts)
    entry = METHODS.get(name)
    entry.obj.check(cfg.method_params(), ctx)
    return ctx, entry.obj.run(cfg.method_params(), ctx), init, pretrained


@pytest.mark.parametrize("scope", ["global", "layerwise"])
@pytest.mark.parametrize("name", METHOD_NAMES)
def test_exact_counts_boolean_masks_and_zero_pruned_weights(name, scope):
    ctx, result, _, _ = _run(name, density=0.3, scope=scope, duration="1ep")
    params = prunable_parameters(ctx.model)
    assert set(result.masks) == set(params)
    kept = result.masks.kept()
    if scope == "global":
        total = sum(p.numel() for p in params.values())
        assert sum(kept.values()) == int(0.3 * total + 0.5)
        assert len(set(result.masks.layer_density().values())) > 1  # one threshold, not per layer
    else:
        for n, p in params.items():
            assert kept[n] == int(0.3 * p.numel() + 0.5)
    for n, m in result.masks.items():
        assert m.dtype == torch.bool and m.shape == params[n].shape
        assert torch.all(params[n][~m] == 0)
    assert result.history and result.info["scores"] == name


@pytest.mark.parametrize("name", METHOD_NAMES)
def test_masks_are_reproducible_and_sparsity_means_removed(name):
    _, a, _, _ = _run(name, seed=3, density=0.3, duration="0it")
    _, b, _, _ = _run(name, seed=3, sparsity=0.7, duration="0it")
    assert a.masks.equal(b.masks)
    _, c, _, _ = _run(name, density=0.3, duration="0it")
    assert not a.masks.equal(c.masks)  # another seed: another init, another mask


@pytest.mark.parametrize("name", METHOD_NAMES)
def test_trains_from_the_init_not_the_pretrained_weights(name):
    ctx, result, init, pretrained = _run(name, density=0.3, duration="0it")
    state = ctx.model.state_dict()
    for k, v in init.items():
        expected = v * result.masks[k] if k in result.masks else v
        assert torch.equal(state[k], expected), k  # survivors = init values exactly
        assert not torch.equal(v, pretrained[k])   # (the pretrained weights differ)
    ctx, result, init, _ = _run(name, density=0.3, duration="2ep")
    changed = []
    for n, p in prunable_parameters(ctx.model).items():
        m = result.masks[n]
        assert torch.all(p[~m] == 0)
        changed.append(p[m] != init[n][m])
    # survivors trained (a few sit on units the mask disconnected and get no gradient)
    assert torch.cat(changed).float().mean() > 0.6


def test_keep_dense_and_bad_options_are_refused():
    ctx, result, _, _ = _run("snip", density=0.3, keep_dense=["layers.2"], duration="0it")
    assert "layers.2.weight" not in result.masks
    assert torch.count_nonzero(ctx.model.layers[2].weight) == ctx.model.layers[2].weight.numel()
    total = sum(m.numel() for m in result.masks.values())
    assert sum(result.masks.kept().values()) == int(0.3 * total + 0.5)
    with pytest.raises(UserError, match="no prunable layer named 'fc9'"):
        _run("grasp", keep_dense=["fc9"])
    with pytest.raises(UserError, match="batches"):
        _run("snip", batches=99)


def test_synflow_refuses_unsupported_layers_and_models_without_weights():
    net = nn.Sequential(nn.Flatten(), nn.Linear(6, 8), nn.LayerNorm(8), nn.ReLU(), nn.Linear(8, 1))
    cfg, ctx, _, _ = _setup("synflow", model=net)
    with pytest.raises(UserError, match="LayerNorm") as e:
        METHODS.get("synflow").obj.run(cfg.method_params(), ctx)
    assert "\n" not in str(e.value)
    cfg, ctx, _, _ = _setup("snip", model=nn.Sequential(nn.Flatten(), nn.Linear(6, 1)))
    ctx.model = nn.Sequential(nn.Flatten())
    with pytest.raises(UserError, match="none"):
        pai.check(cfg.method_params(), ctx)


def test_snip_scores_are_abs_weight_times_gradient():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(5, 7), nn.ReLU(), nn.Linear(7, 3))
    batches = [(torch.randn(16, 5), torch.randint(0, 3, (16,))) for _ in range(2)]
    scores = init_scores.snip_scores(net, batches, loss_fn)
    (loss_fn(net(batches[0][0]), batches[0][1]) + loss_fn(net(batches[1][0]), batches[1][1])).backward()
    for name, layer in (("0.weight", net[0]), ("2.weight", net[2])):
        assert torch.allclose(scores[name], (layer.weight * layer.weight.grad).abs(), atol=1e-7)
    assert set(scores) == {"0.weight", "2.weight"}


def test_snip_leaves_the_model_untouched():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(5, 4), nn.BatchNorm1d(4), nn.Linear(4, 3))
    before = {k: v.clone() for k, v in net.state_dict().items()}
    init_scores.snip_scores(net, [(torch.randn(8, 5), torch.randint(0, 3, (8,)))], loss_fn)
    assert all(torch.equal(before[k], v) for k, v in net.state_dict().items())
    assert all(p.grad is None for p in net.parameters())


def test_synflow_scores_match_the_hand_computed_flow():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(3, 4, bias=False), nn.Linear(4, 2, bias=False))
    with torch.no_grad():
        net[0].weight.uniform_(0.1, 1.0)
        net[1].weight.uniform_(0.1, 1.0)
    w1, w2 = net[0].weight.detach().double(), net[1].weight.detach().double()
    # R = sum_i sum_j w2[i,j] sum_k w1[j,k]  (input all ones)
    s1 = w1 * w2.sum(0)[:, None]          # dR/dw1[j,k] = sum_i w2[i,j]
    s2 = w2 * w1.sum(1)[None, :]          # dR/dw2[i,j] = sum_k w1[j,k]
    scores = init_scores.synflow_iterative(net, (3,), 0.5, rounds=1)
    assert torch.allclose(scores["0.weight"], s1) and torch.allclose(scores["1.weight"], s2)
    assert scores["0.weight"].dtype == torch.float64
    # negative weights: SynFlow uses |w|, so flipping signs changes nothing
    with torch.no_grad():
        net[0].weight[0].neg_()
    flipped = init_scores.synflow_iterative(net, (3,), 0.5, rounds=1)
    assert torch.allclose(flipped["0.weight"], s1) and torch.allclose(flipped["1.weight"], s2)
    # masked weights score -inf (never kept) and their flow disappears from the others
    mask = MaskSet({"0.weight": torch.ones(4, 3, dtype=torch.bool),
                    "1.weight": torch.ones(2, 4, dtype=torch.bool)})
    mask["1.weight"][:, 0] = False
    masked = init_scores.synflow_iterative(net, (3,), 0.5, rounds=1, current=mask)
    assert torch.all(masked["0.weight"][0] == 0) and torch.all(masked["1.weight"][:, 0] == -torch.inf)


def test_synflow_rounds_only_shrink_and_end_exactly_at_the_target():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(8, 32), nn.ReLU(), nn.Linear(32, 16), nn.ReLU(), nn.Linear(16, 3))
    total = sum(p.numel() for p in prunable_parameters(net).values())
    seen = []
    scores = init_scores.synflow_iterative(net, (8,), 0.3, 6, "global",
                                           on_round=lambda k, m: seen.append((k, m)))
    assert [k for k, _ in seen] == [1, 2, 3, 4, 5]
    kept = [sum(m.kept().values()) for _, m in seen]
    assert kept == [int(0.3 ** (k / 6) * total + 0.5) for k in range(1, 6)]
    assert all(a > b for a, b in zip(kept, kept[1:]))
    assert all(is_subset(b, a) for (_, a), (_, b) in zip(seen, seen[1:]))
    final = scoring.select(scores, 0.3, "global")
    assert sum(final.kept().values()) == int(0.3 * total + 0.5)
    assert is_subset(final, seen[-1][1])  # removed weights (-inf) never come back


def test_synflow_keeps_every_layer_where_global_magnitude_collapses_one():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(8, 64), nn.ReLU(), nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 4))
    with torch.no_grad():
        net[4].weight.mul_(0.01)  # a small-scale output layer
    params = prunable_parameters(net)
    magnitude = scoring.select(scoring.magnitude(params), 0.3, "global")
    assert magnitude.kept()["4.weight"] == 0  # layer collapse: the net is disconnected
    flow = scoring.select(init_scores.synflow_iterative(net, (8,), 0.3, 20, "global"), 0.3, "global")
    assert all(k >= 1 for k in flow.kept().values())
    assert sum(flow.kept().values()) == sum(magnitude.kept().values())


def _grasp_net():
    torch.manual_seed(1)
    net = nn.Sequential(nn.Linear(3, 5), nn.Tanh(), nn.Linear(5, 3)).double()
    batch = (torch.randn(12, 3, dtype=torch.float64), torch.randint(0, 3, (12,)))
    return net, batch


def _weight_grads(net, batch, temperature, weights=None):
    """dL/dw over the prunable weights, with `weights` (name -> tensor) substituted."""
    from torch.func import functional_call
    params = dict(net.named_parameters())
    if weights is not None:
        params = {**params, **weights}
    names = list(prunable_parameters(net))
    ws = [params[n].detach().clone().requires_grad_(True) for n in names]
    out = functional_call(net, {**params, **dict(zip(names, ws))}, (batch[0],))
    gs = torch.autograd.grad(loss_fn(out / temperature, batch[1]), ws)
    return dict(zip(names, gs))


def test_grasp_scores_are_minus_w_times_finite_difference_hessian_gradient():
    net, batch = _grasp_net()
    t, eps = 3.0, 1e-5
    scores = init_scores.grasp_scores(net, [batch], loss_fn, temperature=t)
    w = {n: p.detach() for n, p in prunable_parameters(net).items()}
    g = _weight_grads(net, batch, t)
    plus = _weight_grads(net, batch, t, {n: w[n] + eps * g[n] for n in w})
    minus = _weight_grads(net, batch, t, {n: w[n] - eps * g[n] for n in w})
    for n in w:
        hg = (plus[n] - minus[n]) / (2 * eps)
        assert torch.allclose(scores[n], -w[n] * hg, rtol=1e-5, atol=1e-10), n
    assert any(bool((s > 0).any()) and bool((s < 0).any()) for s in scores.values())


def test_grasp_high_score_means_removal_raises_gradient_norm_and_is_pruned():
    net, batch = _grasp_net()
    t, eps = 3.0, 1e-5
    scores = init_scores.grasp_scores(net, [batch], loss_fn, temperature=t)
    w = {n: p.detach() for n, p in prunable_parameters(net).items()}

    def grad_norm_sq(n, idx, scale):  # ||g||^2 with weight idx of n moved by scale * (-w)
        moved = w[n].clone()
        moved[idx] -= scale * w[n][idx]
        return sum(float((v ** 2).sum()) for v in _weight_grads(net, batch, t, {n: moved}).values())

    for n in w:
        for idx in [(0, 0), (1, 2), (2, 1)]:
            slope = (grad_norm_sq(n, idx, eps) - grad_norm_sq(n, idx, -eps)) / (2 * eps)
            assert slope == pytest.approx(2 * float(scores[n][idx]), rel=1e-4, abs=1e-12)
    # the method keeps the LOWEST scores: every pruned weight scores >= every kept one
    cfg, ctx, init, _ = _setup("grasp", density=0.3, duration="0it", batches=1)
    result = METHODS.get("grasp").obj.run(cfg.method_params(), ctx)
    model = build(cfg, ctx.data)
    model.load_state_dict(init)
    s = init_scores.grasp_scores(model, pai.score_batches(ctx, 1), loss_fn, 200.0)
    kept = torch.cat([s[n][m] for n, m in result.masks.items()])
    pruned = torch.cat([s[n][~m] for n, m in result.masks.items()])
    assert pruned.min() >= kept.max()
