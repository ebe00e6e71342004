"""Weedout: node-mask machinery (compress.methods.weedout.node_masks) and the random-search method."""

import copy

import pytest
import torch

from compress.config import resolve
from compress.methods.weedout import node_masks as nm
from compress.core.masking import prunable_parameters
from compress.core.masks import MaskSet
from compress.core.structure import shrink_mlp
from compress.data.base import DataBundle, Split
from compress.errors import UserError
from compress.methods.base import PruneContext
from compress.methods.weedout.method import WeedoutParams, weedout
from compress.models.base import build_model
from compress.models.mlp import MLP
from compress.stages.runner import build, load_data

TINY = {
    "data": {"name": "xor", "k": 2, "p": 6, "n_train": 256, "n_val": 128, "n_test": 128},
    "model": {"name": "mlp", "hidden": [24, 16]},
    "train": {"duration": "2ep", "batch_size": 64},
}
FAST = {"population": 6, "generations": 3, "fitness_batch": 48, "density": 0.3}


def _ctx(cfg, rounds=None):
    data = load_data(cfg)
    model = build(cfg, data)
    init = {k: v.clone() for k, v in model.state_dict().items()}
    return PruneContext(model, data, cfg.train, MaskSet.ones_like(prunable_parameters(model)),
                        cfg.seed, progress=False, init=init,
                        build=lambda offset: build(cfg, data, seed_offset=offset),
                        on_round=(lambda *a: rounds.append(a)) if rounds is not None else None)


def _run(seed=0, rounds=None, layers=None, **opts):
    cfg = resolve({**TINY, **(layers or {}),
                   "method": {"name": "weedout", **FAST, **opts}}, seed=seed)
    ctx = _ctx(cfg, rounds)
    return ctx, weedout(cfg.method_params(), ctx)


def _mlp(hidden=(12, 8, 6)):
    torch.manual_seed(0)
    return MLP(5, list(hidden), 3)


def _explicit(model, layers, nodes, x):
    """Forward with the converted weight masks applied to the weights (no hooks)."""
    wm = nm.node_to_weight_masks(model, layers, nodes)
    params = prunable_parameters(model)
    masked = {n: params[n] * wm[n].float() for n in wm}
    with torch.no_grad():
        return torch.func.functional_call(model, masked, (x,))


def _hooked_logits(model, layers, pop, x):
    with nm.NodeMaskHooks(layers) as hooks, torch.no_grad():
        hooks.set(pop, len(x))
        return model(x).view(nm.size(pop), len(x), -1)


# ----------------------------------------------------------------------------- machinery
def test_layerwise_and_global_kept_counts_are_exact():
    model = _mlp()
    layers = nm.require_layers(model)
    assert [lay.units for lay in layers] == [12, 8, 6]  # output layer never masked
    gen = torch.Generator().manual_seed(1)
    pop = nm.sample(layers, 20, 0.3, "layerwise", gen)
    for lay in layers:
        assert torch.all(pop[lay.name].sum(1) == nm.kept_count(lay.units, 0.3))
    assert [nm.kept_count(n, 0.3) for n in (12, 8, 6)] == [4, 2, 2]
    pop = nm.sample(layers, 50, 0.3, "global", gen)
    total = sum(pop[lay.name].sum(1) for lay in layers)
    assert torch.all(total == round(0.3 * 26)) and nm.global_kept_count(layers, 0.3) == 8
    assert all(bool(pop[lay.name].any(1).all()) for lay in layers)  # no empty layer
    # global counts differ between layers across candidates (one budget, not per layer)
    assert len({tuple(pop[lay.name][i].sum().item() for lay in layers) for i in range(50)}) > 1


def test_mutation_keeps_counts():
    layers = nm.require_layers(_mlp())
    gen = torch.Generator().manual_seed(2)
    for scope in ("layerwise", "global"):
        pop = nm.sample(layers, 30, 0.4, scope, gen)
        new = nm.mutate(layers, pop, 0.5, scope, gen)
        if scope == "layerwise":
            assert all(torch.equal(new[n].sum(1), pop[n].sum(1)) for n in pop)
        total = lambda p: sum(p[n].sum(1) for n in p)  # noqa: E731
        assert torch.equal(total(new), total(pop))
        assert all(bool(new[n].any(1).all()) for n in new)
        assert any(not torch.equal(new[n], pop[n]) for n in pop)


def test_hooked_forward_equals_masked_weights_forward_and_stacked_equals_alone():
    model = _mlp()
    layers = nm.require_layers(model)
    pop = nm.sample(layers, 7, 0.5, "layerwise", torch.Generator().manual_seed(3))
    x, y = torch.randn(10, 5), torch.randint(3, (10,))
    logits = _hooked_logits(model, layers, pop, x)
    for i in range(7):
        nodes = {n: v[i] for n, v in pop.items()}
        assert torch.allclose(logits[i], _explicit(model, layers, nodes, x), atol=1e-6)
    with nm.NodeMaskHooks(layers) as hooks:
        stacked = nm.population_losses(model, hooks, pop, x, y)
        chunked = nm.population_losses(model, hooks, pop, x, y, chunk=3)
        alone = torch.cat([nm.population_losses(model, hooks, nm.take(pop, [i]), x, y)
                           for i in range(7)])
    assert torch.allclose(stacked, alone, atol=1e-6) and torch.allclose(chunked, alone, atol=1e-6)
    ref = torch.stack([torch.nn.functional.cross_entropy(logits[i], y) for i in range(7)])
    assert torch.allclose(stacked, ref, atol=1e-6)
    assert not model._forward_hooks and not any(m._forward_hooks for m in model.modules())


def test_weight_masks_zero_exactly_the_rows_and_columns():
    model = _mlp()
    layers = nm.require_layers(model)
    nodes = {n: v[0] for n, v in nm.sample(layers, 1, 0.5, "layerwise",
                                            torch.Generator().manual_seed(4)).items()}
    wm = nm.node_to_weight_masks(model, layers, nodes)
    assert set(wm) == set(prunable_parameters(model))
    keep = [nodes[f"layers.{i}.weight"] for i in range(3)]
    for i in range(4):
        rows = keep[i] if i < 3 else torch.ones(3, dtype=torch.bool)
        cols = keep[i - 1] if i > 0 else torch.ones(5, dtype=torch.bool)
        assert torch.equal(wm[f"layers.{i}.weight"], rows[:, None] & cols[None, :])


def test_conv_net_channel_masks_and_method_on_fake_images():
    torch.manual_seed(0)
    model = build_model("conv2", {"width": 0.25}, (1, 28, 28), 10)
    layers = nm.require_layers(model)
    assert [(lay.name, lay.units, lay.block) for lay in layers] == [
        ("features.0.weight", 16, 1), ("features.2.weight", 16, 196),
        ("classifier.0.weight", 64, 1), ("classifier.2.weight", 64, 1)]
    pop = nm.sample(layers, 3, 0.3, "layerwise", torch.Generator().manual_seed(5))
    x = torch.randn(4, 1, 28, 28)
    logits = _hooked_logits(model, layers, pop, x)
    nodes = {n: v[1] for n, v in pop.items()}
    assert torch.allclose(logits[1], _explicit(model, layers, nodes, x), atol=1e-5)
    wm = nm.node_to_weight_masks(model, layers, nodes)
    gone = ~nodes["features.0.weight"]
    assert not wm["features.0.weight"][gone].any() and wm["features.0.weight"][~gone].all()
    assert not wm["features.2.weight"][:, gone].any()
    cols = wm["classifier.0.weight"].view(64, 16, 196)  # flatten: channel-major blocks of 7x7
    gone2 = ~nodes["features.2.weight"]
    assert not cols[:, gone2].any() and cols[nodes["classifier.0.weight"]][:, ~gone2].all()

    def split(n):
        return Split(torch.randn(n, 1, 28, 28), torch.randint(10, (n,)))
    data = DataBundle("fake", split(64), split(40), split(40), 10, (1, 28, 28))
    cfg = resolve({"train": {"duration": "3it", "batch_size": 16, "optimizer": "sgd", "lr": 0.01}})
    ctx = PruneContext(model, data, cfg.train, MaskSet.ones_like(prunable_parameters(model)), 0,
                       progress=False, init=copy.deepcopy(model.state_dict()))
    result = weedout(WeedoutParams(population=4, generations=2, fitness_batch=16, density=0.3,
                                   control=False), ctx)
    params = prunable_parameters(model)
    assert result.info["winner"]["kept"] == {"features.0": 5, "features.2": 5,
                                             "classifier.0": 19, "classifier.2": 19}
    for n, m in result.masks.items():
        assert torch.all(params[n][~m] == 0)
    # The winner's removed channels and units read nothing downstream: the export drops them.
    from compress.core.channels import shrink_channels as shrink_cnn
    net, spec = shrink_cnn(model, data.test.x[:4], result.masks, round_to=1)
    assert [s["kept"] for s in spec["groups"]] == [5, 5, 19, 19]
    with torch.no_grad():
        assert torch.allclose(net(data.test.x), model.eval()(data.test.x), rtol=1e-5, atol=1e-6)


def test_no_maskable_layers_and_non_chain_nets_are_refused():
    with pytest.raises(UserError, match="no hidden units"):
        nm.require_layers(torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(4, 2)))
    with pytest.raises(UserError, match="no hidden units"):
        _run(layers={"model": {"name": "mlp", "hidden": []}})

    class Residual(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.b, self.out = (torch.nn.Linear(4, 4), torch.nn.Linear(4, 4),
                                        torch.nn.Linear(4, 2))

        def forward(self, x):
            h = torch.relu(self.a(x))
            return self.out(torch.relu(self.b(h)) + h)
    net = Residual()
    with pytest.raises(UserError, match="not a simple chain"):
        nm.check_chain(net, nm.require_layers(net), torch.randn(8, 4))


@pytest.mark.parametrize("opts, match", [({"population": 1}, "population"),
                                         ({"density": None, "sparsity": 1.2}, "sparsity"),
                                         ({"density": 0.0}, "density")])
def test_bad_options_are_one_line_user_errors(opts, match):
    with pytest.raises(UserError, match=match) as e:
        resolve({"method": {"name": "weedout", **opts}})
    assert "\n" not in str(e.value)


# ----------------------------------------------------------------------------- the method
def test_random_search_keeps_the_incumbent_and_logs_every_generation():
    rounds = []
    ctx, result = _run(rounds=rounds, generations=4, patience=0)
    rows = result.info["generations"]
    assert [r[0] for r in rounds] == [1, 2, 3, 4] and len(rows) == 4
    for (g, masks, metrics, history), row in zip(rounds, rows):
        assert set(metrics) == {"best_fitness", "mean_fitness", "generation"} and history == []
        assert metrics["best_fitness"] == row["best_fitness"] >= metrics["mean_fitness"]
    for prev, cur, row in zip(rounds, rounds[1:], rows[1:]):
        # the previous best is in the population: the best is never worse than it on this batch
        assert row["best_fitness"] >= row["incumbent_fitness"]
        assert row["improved"] or cur[1].equal(prev[1])
    assert rounds[-1][1].equal(result.masks)
    # the same batch every generation (fitness_batch >= selection pool): best fitness monotone
    rounds = []
    _run(rounds=rounds, generations=4, patience=0, fitness_batch=10_000, population=12)
    best = [r[2]["best_fitness"] for r in rounds]
    assert all(b >= a - 1e-6 for a, b in zip(best, best[1:])) and best[-1] > best[0] - 1e-6


def test_patience_stops_early():
    _, result = _run(generations=50, patience=1, population=2)
    rows = result.info["generations"]
    assert result.info["stopped_early"] and len(rows) < 50 and not rows[-1]["improved"]


def test_reproducible_for_the_same_seed_and_different_for_another():
    ctx_a, a = _run(seed=3, selection="tournament")
    ctx_b, b = _run(seed=3, selection="tournament")
    assert a.masks.equal(b.masks) and a.info["generations"] == b.info["generations"]
    for k, v in ctx_a.model.state_dict().items():
        assert torch.equal(v, ctx_b.model.state_dict()[k])
    _, c = _run(seed=4, selection="tournament")
    assert not a.masks.equal(c.masks)


def test_winner_and_control_are_trained_scored_held_out_and_export_smaller():
    ctx, result = _run(density=None, sparsity=0.7)
    info = result.info
    win, ctl = info["winner"], info["control"]
    assert win["kept"] == {"layers.0": 7, "layers.1": 5} == ctl["kept"]
    for part in (win, ctl):
        assert 0 <= part["test_accuracy"] <= 1 and part["heldout_fitness"] < 0
    assert info["heldout"]["samples"] == 32 and "population_std" in info["heldout"]
    assert info["search_seconds"] > 0 and info["train_seconds"] > 0
    params = prunable_parameters(ctx.model)
    for n, m in result.masks.items():
        assert torch.all(params[n][~m] == 0)
        assert torch.count_nonzero(params[n][m]) > 0.9 * int(m.sum())  # survivors trained
    shrunk, spec = shrink_mlp(ctx.model, result.masks)
    assert spec["widths"]["dense"] == [6, 24, 16, 1]
    assert spec["widths"]["shrunk"] == [6, 7, 5, 1]  # widths shrink by ~eta = 0.7
    x = ctx.data.test.x
    with torch.no_grad():
        assert torch.allclose(shrunk(x), ctx.model(x), atol=1e-5)


def test_global_unstructured_and_fitness_steps_scopes():
    ctx, result = _run(scope="global", density=0.25)
    assert sum(result.info["winner"]["kept"].values()) == 10  # round(0.25 * 40)
    ctx, result = _run(scope="unstructured", control=False, heldout=0.0)
    params = prunable_parameters(ctx.model)
    assert result.masks.kept()["layers.0.weight"] == round(0.3 * params["layers.0.weight"].numel())
    assert bool(result.masks["layers.2.weight"].all())  # the output layer is not masked
    assert result.info["heldout"] == {"samples": 0}
    _, result = _run(fitness_steps=2, population=3, generations=2, control=False)
    assert len(result.info["generations"]) == 2 and "population_mean" not in result.info["heldout"]
