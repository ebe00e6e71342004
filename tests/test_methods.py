"""Every registered method, tested by looping over the registry (new methods join for free)."""

import pytest
import torch
from compress.config import resolve
from compress.core.loop import fit
from compress.core.masking import prunable_parameters
from compress.core.masks import MaskSet
from compress.methods.base import PruneContext
from compress.methods.cpna import normalize_units
from compress.methods.presets import TINY_MLP
from compress.registry import METHODS
from compress.stages.runner import build, load_data
from tests.checks import is_subset

def settings(name: str, **opts) -> dict:
    """The method's own tiny test settings (its `test_settings`), plus these method options."""
    overlay = METHODS.get(name).obj.test_settings
    assert overlay.get("data") and overlay.get("model"), f"{name} declares no test_settings"
    return {**overlay, "method": {**overlay.get("method", {}), "name": name, **opts}}


def _run_opts(name, **opts):
    """_run with method options that clash with its own argument names (e.g. `rounds`)."""
    return _run(name, extra=opts)


def _run(name, seed=0, rounds=None, extra=None, **opts):
    cfg = resolve(settings(name, **opts, **(extra or {})), seed=seed)
    data = load_data(cfg)
    model = build(cfg, data)
    init = {k: v.clone() for k, v in model.state_dict().items()}
    fit(model, data, cfg.train, seed=cfg.seed)  # the dense pretraining
    start = MaskSet.ones_like(prunable_parameters(model))
    ctx = PruneContext(model, data, cfg.train, start, cfg.seed, progress=False, init=init,
                       dense_train=cfg.train, dense_seed=cfg.seed,
                       build=lambda offset: build(cfg, data, seed_offset=offset),
                       on_round=(lambda *a: rounds.append(a)) if rounds is not None else None)
    return model, METHODS.get(name).obj.run(cfg.method_params(), ctx)


@pytest.mark.parametrize("name", METHODS.names())
def test_method_masks_are_boolean_sparse_and_enforced(name):
    model, result = _run(name)
    params = dict(model.named_parameters())  # structured methods also mask biases and BN
    assert set(prunable_parameters(model)) <= set(result.masks) <= set(params)
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


@pytest.mark.parametrize("name", METHODS.names())
def test_pruned_weights_are_zero_and_survivors_trained(name):
    model, result = _run(name)
    params = dict(model.named_parameters())
    for n, m in result.masks.items():
        assert torch.count_nonzero(params[n][m]) > 0.9 * int(m.sum())


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


def test_imp_masks_are_nested_and_follow_per_layer_rates():
    rounds = []
    model, result = _run("imp", rounds=rounds)
    assert [r[0] for r in rounds] == [1, 2]
    (_, m1, row1, _), (_, m2, row2, _) = rounds
    assert is_subset(m2, m1) and not is_subset(m1, m2)
    assert m2.equal(result.masks)
    sizes = {n: p.numel() for n, p in prunable_parameters(model).items()}
    # fc layer loses 30% of survivors per round, the output layer half that (exact counts)
    fc, out = "layers.0.weight", "layers.1.weight"
    assert m1.kept()[fc] == round(0.7 * sizes[fc]) and m2.kept()[fc] == round(0.7 * m1.kept()[fc])
    assert m1.kept()[out] == round(0.85 * sizes[out])
    assert row2["density"] < row1["density"] and "ticket_test_accuracy" in row1


def test_imp_target_density_and_global_scope():
    model, result = _run_opts("imp", fraction=None, density=0.2, scope="global", rounds=3)
    total = sum(p.numel() for p in prunable_parameters(model).values())
    assert abs(result.masks.density() - 0.2) < 0.01
    assert sum(result.masks.kept().values()) == round(0.2 ** (1 / 3) * round(
        0.2 ** (1 / 3) * round(0.2 ** (1 / 3) * total)))


def test_imp_keep_dense_and_bad_layer_name():
    from compress.errors import UserError
    model, result = _run("imp", keep_dense=["layers.1"])
    assert "layers.1.weight" not in result.masks
    with pytest.raises(UserError, match="no prunable layer named 'fc9'"):
        _run("imp", keep_dense=["fc9"])


def test_rewind_point_after_training_is_refused():
    from compress.errors import UserError
    with pytest.raises(UserError, match="after the end of dense training"):
        _run("imp", rewind="99ep")


def test_rewind_point_replays_dense_training_exactly():
    from compress.methods.controls import rewind_state
    cfg = resolve(TINY_MLP)
    data = load_data(cfg)
    model = build(cfg, data)
    init = {k: v.clone() for k, v in model.state_dict().items()}
    fit(model, data, cfg.train, seed=cfg.seed)
    spe = -(-256 // 64)
    replayed = rewind_state(lambda o: build(cfg, data, seed_offset=o), init, f"{2 * spe}it", data,
                            cfg.train, cfg.seed)
    for k, v in model.state_dict().items():
        assert torch.equal(replayed[k], v)  # 2 epochs = all of dense training, bit for bit


def test_imp_controls_are_reported_per_round():
    rounds = []
    _run("imp", rounds=rounds, controls=["reinit", "random_prune", "scratch_b"])
    row = rounds[-1][2]
    for c in ("ticket", "reinit", "random_prune", "scratch_b"):
        assert 0 <= row[f"{c}_test_accuracy"] <= 1


def test_gmp_lands_exactly_on_the_final_sparsity():
    model, result = _run("gmp")
    updates = result.info["updates"]
    assert updates[-1] == (6, pytest.approx(0.7))  # t0 + n*dt = 0 + 3*2
    sparsities = [s for _, s in updates]
    assert all(a <= b for a, b in zip(sparsities, sparsities[1:]))
    for n, p in prunable_parameters(model).items():
        assert result.masks.kept()[n] == int(0.3 * p.numel() + 0.5)


def test_gmp_schedule_longer_than_training_is_refused():
    from compress.errors import UserError
    with pytest.raises(UserError, match="after training ends"):
        _run("gmp", steps=10, interval="5it", duration="20it")


def test_cpna_default_targets_scale_with_the_output_width():
    from torch import nn

    from compress.core.masking import MaskEnforcer
    from compress.methods.cpna import CPNAHook, CPNAParams
    for outputs in (1, 10):
        layers = [("a", nn.Linear(64, 256)), ("b", nn.Linear(256, outputs))]
        ann = CPNAHook(CPNAParams(), layers, MaskEnforcer({}))
        assert (ann.target(1), ann.target(0)) == (12 * outputs, 24 * outputs)
    explicit = CPNAHook(CPNAParams(output_connections=7), layers, MaskEnforcer({}))
    assert explicit.target(1) == 7


@pytest.mark.parametrize("name", METHODS.names())
def test_every_method_runs_as_a_stage_and_exports_with_parity(name, tmp_path):
    """The whole chain a user runs (pretrain -> prune stage -> export), not just the method."""
    from pathlib import Path

    from compress.stages.artifacts import StageInfo
    from compress.stages.pipeline import run_one
    from compress.stages.runner import StageEnv
    from compress.tracking.base import NullTracker
    cfg = resolve(settings(name), {"export": {"benchmark": False}}, seed=1)
    env = StageEnv(tracker=NullTracker(), root=tmp_path, progress=False)
    info = None
    for stage in ("pretrain", "prune", "export"):
        record = run_one(stage, cfg, env, info, tmp_path / stage)
        info = StageInfo(Path(record["out_dir"]), record)
    assert record["metrics"]["parity_rel_error"] <= 1e-5
    assert record["density"] < 1
