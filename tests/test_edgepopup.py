"""edge-popup and IteRand: frozen seeded weights, trained scores, exact rebuild from seeds."""

import math

import pytest
import torch

from compress.config import resolve
from compress.methods.edgepopup import scores as sm
from compress.core.loop import fit
from compress.core.masking import prunable_parameters
from compress.core.masks import MaskSet
from compress.errors import UserError
from compress.methods.base import PruneContext
from compress.methods.edgepopup.method import rebuild
from compress.registry import METHODS
from compress.stages.artifacts import read_stage
from compress.stages.pipeline import run_one
from compress.stages.runner import StageEnv, build, load_data

TINY = {"data": {"name": "xor", "k": 2, "p": 6, "n_train": 256, "n_val": 64, "n_test": 64},
        "model": {"name": "mlp", "hidden": [32]},
        "train": {"optimizer": "sgd", "lr": 0.1, "duration": "4ep", "batch_size": 32}}


def _run(name, **opts):
    cfg = resolve(TINY, {"method": {"name": name, **opts}})
    data = load_data(cfg)
    model = build(cfg, data)
    ctx = PruneContext(model, data, cfg.train, MaskSet.ones_like(prunable_parameters(model)),
                       cfg.seed, progress=False)
    return model, METHODS.get(name).obj.run(cfg.method_params(), ctx)


@pytest.mark.parametrize("init", ["signed_constant", "kaiming_normal", "kaiming_uniform"])
def test_weight_inits_follow_their_distribution(init):
    w = sm.draw(torch.Size([400, 50]), init, torch.Generator().manual_seed(0))
    std = math.sqrt(2 / 50)
    if init == "signed_constant":
        assert w.abs().unique().tolist() == [pytest.approx(std)]
        assert abs(float((w > 0).float().mean()) - 0.5) < 0.05
    else:
        assert abs(float(w.std()) - std) < 0.05 * std
    if init == "kaiming_uniform":
        assert float(w.abs().max()) <= std * math.sqrt(3) + 1e-6


def test_density_is_the_fraction_kept_in_every_layer():
    model, result = _run("edgepopup", density=0.3)
    for n, p in prunable_parameters(model).items():
        assert result.masks.kept()[n] == int(0.3 * p.numel() + 0.5)


def test_only_scores_train_and_weights_stay_the_seeded_draw():
    model, result = _run("edgepopup", density=0.3, weight_init="kaiming_normal")
    seeds = result.info["seeds"]
    drawn = sm.draw_weights(model, seeds["names"], "kaiming_normal", seeds["base_seed"])
    params = dict(model.named_parameters())
    for n, m in result.masks.items():
        assert torch.equal(params[n][m], drawn[n][m])  # kept weights are the untouched draw
        assert torch.all(params[n][~m] == 0)
    for mod in model.modules():
        if getattr(mod, "bias", None) is not None:
            assert torch.all(mod.bias == 0)  # no biases


def test_straight_through_gradient_reaches_pruned_scores():
    torch.manual_seed(0)
    lin = torch.nn.Linear(8, 4)
    scored = sm.attach(torch.nn.Sequential(lin), {"0.weight": 0.25}, seed=0)["0.weight"]
    lin(torch.randn(16, 8)).pow(2).sum().backward()
    grad = scored.scores.grad
    assert grad is not None and bool((grad[~scored.mask()] != 0).any())


def test_scores_alone_learn_digits():
    cfg = resolve({"data": {"name": "digits"}, "model": {"name": "mlp", "hidden": [64]},
                   "train": {"optimizer": "sgd", "lr": 0.1, "duration": "3ep", "batch_size": 32},
                   "method": {"name": "edgepopup", "density": 0.5}})
    data = load_data(cfg)
    model = build(cfg, data)
    ctx = PruneContext(model, data, cfg.train, MaskSet.ones_like(prunable_parameters(model)),
                       cfg.seed, progress=False)
    result = METHODS.get("edgepopup").obj.run(cfg.method_params(), ctx)
    assert result.history[-1]["val_accuracy"] > 0.7  # chance is 0.1; weights never trained


def test_iterand_redraws_only_pruned_weights_and_rebuilds_bit_for_bit():
    model, result = _run("iterand", density=0.3, k_per=3, r=0.5)
    seeds = result.info["seeds"]
    assert len(seeds["events"]) == 4 * 8 // 3 - (1 if (4 * 8) % 3 == 0 else 0)
    assert all(e["step"] % 3 == 0 for e in seeds["events"])
    redrawn = result.tensors["redrawn"]
    assert any(bool(v.any()) for v in redrawn.values())
    rebuilt = rebuild(model, seeds, redrawn, result.masks)
    params = dict(model.named_parameters())
    for n, w in rebuilt.items():
        assert torch.equal(w, params[n].detach())
    # unmasked, the events change exactly the positions they redrew (and only pruned ones)
    ones = MaskSet({n: torch.ones_like(m) for n, m in result.masks.items()})
    with_events, plain = rebuild(model, seeds, redrawn, ones), rebuild(model, {**seeds, "events": []}, {}, ones)
    for n in plain:
        touched = torch.zeros_like(plain[n], dtype=torch.bool)
        for key, where in redrawn.items():
            if key.endswith("." + n):
                touched |= where
        changed = with_events[n] != plain[n]
        assert not bool((changed & ~touched).any())  # nothing outside a redraw changed
    assert any(bool((with_events[n] != plain[n]).any()) for n in plain)


def test_iterand_r0_equals_edgepopup():
    _, a = _run("iterand", density=0.3, k_per=2, r=0.0)
    _, b = _run("edgepopup", density=0.3)
    assert a.masks.equal(b.masks)


@pytest.mark.parametrize("opts, words", [({"k_per": 0}, "method.k_per"), ({"r": 1.5}, "method.r"),
                                         ({"weight_init": "xavier"}, "method.weight_init")])
def test_bad_options(opts, words):
    with pytest.raises(UserError, match=words):
        resolve(TINY, {"method": {"name": "iterand", **opts}})


def test_export_refuses_weights_that_do_not_rebuild(tmp_path):
    env = StageEnv(root=tmp_path, progress=False)
    cfg = resolve(TINY, {"method": {"name": "iterand", "density": 0.3, "k_per": 4}})
    pre = read_stage(run_one("pretrain", cfg, env, None, tmp_path / "pre")["out_dir"])
    pr = read_stage(run_one("prune", cfg, env, pre, tmp_path / "pr")["out_dir"])
    ok = run_one("export", cfg, env, pr, tmp_path / "ex")
    assert ok["metrics"]["parity_rel_error"] < 1e-5
    # alter one kept weight and re-seal the folder's checksums: the rebuild check must catch it
    import json
    from compress.stages.artifacts import load_state, save_state, write_record
    state = load_state(pr.dir / "weights.safetensors")
    name, m = next(iter(pr.masks().items()))
    state[name][m.nonzero()[0].tolist()[0], m.nonzero()[0].tolist()[1]] += 1.0
    save_state(state, pr.dir / "weights.safetensors")
    write_record(pr.dir, json.loads((pr.dir / "stage.json").read_text()))
    with pytest.raises(UserError, match="rebuilt from its seeds"):
        run_one("export", cfg, env, read_stage(pr.dir), tmp_path / "ex2")
    assert not (tmp_path / "ex2").exists()
