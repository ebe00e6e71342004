"""Every registered method, tested by looping over the registry (new methods join for free)."""

import pytest
import torch

from compress.config import resolve
from compress.core.masking import prunable_parameters
from compress.core.masks import MaskSet
from compress.methods.base import PruneContext
from compress.methods.cpna import normalize_units
from compress.registry import METHODS
from compress.stages.runner import build, load_data

TINY = {
    "data": {"name": "xor", "k": 2, "p": 6, "n_train": 256, "n_val": 128, "n_test": 128},
    "model": {"name": "mlp", "hidden": [24]},
    "train": {"duration": "2ep", "batch_size": 64},
}
# Options that make each method tiny; densities other than 0.5 so density/sparsity mix-ups show.
FAST = {"cpna": {"anneal_epochs": 4, "final_epochs": 1, "output_connections": 5, "input_connections": 9},
        "cpa": {"anneal_epochs": 4, "final_epochs": 1, "output_connections": 5, "input_connections": 9},
        "magnitude": {"density": 0.3, "finetune": "1ep"}, "random": {"density": 0.3, "finetune": "1ep"}}


def _run(name, seed=0, **opts):
    cfg = resolve(TINY, {"method": {"name": name, **FAST.get(name, {}), **opts}}, seed=seed)
    data = load_data(cfg)
    model = build(cfg, data)
    start = MaskSet.ones_like(prunable_parameters(model))
    ctx = PruneContext(model, data, cfg.train, start, cfg.seed, progress=False)
    return model, METHODS.get(name).obj(cfg.method_params(), ctx)


@pytest.mark.parametrize("name", METHODS.names())
def test_method_masks_are_boolean_sparse_and_enforced(name):
    model, result = _run(name)
    params = prunable_parameters(model)
    assert set(result.masks) <= set(params)
    assert 0 < result.masks.density() < 1
    for n, m in result.masks.items():
        assert m.dtype == torch.bool and m.shape == params[n].shape
        assert torch.all(params[n][~m] == 0)


@pytest.mark.parametrize("name", METHODS.names())
def test_method_is_reproducible(name):
    _, a = _run(name, seed=3)
    _, b = _run(name, seed=3)
    assert a.masks.equal(b.masks)


def test_every_method_has_a_summary_and_params():
    for e in METHODS.entries():
        assert e.summary and e.params is not None


@pytest.mark.parametrize("density", [0.3, 0.8])
def test_one_shot_densities_are_exact(density):
    for name in ("magnitude", "random"):
        model, result = _run(name, density=density, finetune="0ep")
        for n, p in prunable_parameters(model).items():
            assert result.masks.kept()[n] == int(density * p.numel() + 0.5)


def test_cpna_reaches_its_connection_targets_and_drops_dead_units():
    model, result = _run("cpna")
    kept = result.masks.kept()
    assert kept["layers.1.weight"] <= 5 and kept["layers.0.weight"] <= 9
    # a unit without outgoing connections keeps no incoming ones
    out_alive = result.masks["layers.1.weight"].any(0)
    assert not result.masks["layers.0.weight"][~out_alive].any()
    # per-epoch connection counts never grow
    conns = [r["connections"] for r in result.history]
    assert all(a >= b for a, b in zip(conns, conns[1:]))


def test_cpna_density_targets_and_hidden_only():
    model, result = _run("cpna", output_connections=None, output_density=0.25, prune_input=False)
    assert result.masks.kept()["layers.1.weight"] == round(0.25 * 24)
    assert result.masks.layer_density()["layers.0.weight"] > 0.2  # input layer only loses dead units


def test_cpna_node_variant_prunes_whole_units():
    model, result = _run("cpna", granularity="node", units=4)
    rows = result.masks["layers.0.weight"].any(1)
    cols = result.masks["layers.1.weight"].any(0)
    assert int((rows & cols).sum()) <= 4
    assert torch.equal(result.masks["layers.0.weight"][rows], torch.ones(int(rows.sum()), 6, dtype=torch.bool))


def test_normalisation_preserves_the_function_and_gives_unit_rows():
    torch.manual_seed(0)
    from compress.models.mlp import MLP
    net = MLP(6, [12, 8], 2)
    x = torch.randn(32, 6)
    before = net(x)
    layers = [m for m in net.layers]
    normalize_units(layers)
    assert torch.allclose(net(x), before, atol=1e-5)
    for layer in layers[:-1]:
        assert torch.allclose(layer.weight.norm(dim=1), torch.ones(layer.out_features), atol=1e-5)


def test_cpa_does_not_normalise():
    cfg = resolve({"method": {"name": "cpa"}})
    assert cfg.method_params().normalize is False
    assert resolve().method_params().normalize is True


def test_cpna_rejects_non_mlp():
    from compress.errors import UserError
    from compress.methods.cpna import linear_layers
    with pytest.raises(UserError, match="MLP"):
        linear_layers(torch.nn.Sequential(torch.nn.Conv2d(1, 2, 3), torch.nn.Flatten(), torch.nn.Linear(2, 1)))
