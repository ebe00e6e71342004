"""l1filter and slimming (compress.methods.structured): which channels go, which groups are
considered, the guards, and that the result stays structurally dead through fine-tuning."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from compress.config import resolve
from compress.core import channels as ch
from compress.core.masking import prunable_parameters
from compress.core.masks import MaskSet
from compress.errors import UserError
from compress.methods.base import PruneContext
from compress.methods.structured.method import BNScalePenalty, L1Filter, L1FilterParams, Slimming

l1filter, slimming = L1Filter(), Slimming()
from compress.stages.runner import build, load_data

DIGITS = {"data": {"name": "digits"}, "train": {"duration": "1ep", "batch_size": 128}}
CONV = {"model": {"name": "conv2", "width": 0.125, "batchnorm": True}}  # 8 + 8 channels, FC 32-32
RESNET = {"model": {"name": "resnet20"}}


def _ctx(model_layer: dict, method: dict, seed: int = 0):
    cfg = resolve(DIGITS, model_layer, {"method": method}, seed=seed)
    data = load_data(cfg)
    model = build(cfg, data)
    ctx = PruneContext(model, data, cfg.train, MaskSet.ones_like(prunable_parameters(model)),
                       cfg.seed, progress=False)
    return cfg.method_params(), ctx


def _run(fn, model_layer, method, seed=0):
    p, ctx = _ctx(model_layer, method, seed)
    before = {k: v.clone() for k, v in ctx.model.state_dict().items()}
    fn.check(p, ctx)
    return fn.run(p, ctx), ctx, before


def _dropped(result, group: str) -> list[int]:
    """Output channels of layer `group` whose filters the mask removed."""
    m = result.masks[f"{group}.weight"]
    return torch.nonzero(~m.flatten(1).any(1)).flatten().tolist()


def test_l1filter_prunes_each_blocks_first_conv_by_filter_norm():
    result, ctx, before = _run(l1filter, RESNET, {"name": "l1filter", "sparsity": 0.3,
                                                  "coupled": False, "finetune": "0ep"})
    chosen = result.info["channels"]
    assert sorted(chosen) == [f"blocks.{i}.conv1" for i in range(9)]  # Li et al.'s ResNet rule
    for name, c in chosen.items():
        w = before[f"{name}.weight"]
        norms = w.abs().flatten(1).sum(1)
        expect = round(0.7 * w.shape[0])
        assert c == {"kept": expect, "total": w.shape[0]}
        gone = _dropped(result, name)
        assert len(gone) == w.shape[0] - expect
        assert norms[gone].max() <= norms[[i for i in range(len(norms)) if i not in gone]].min()
    # Residual-tied outputs (conv2 of each block, the stem) keep every channel.
    assert result.masks["blocks.0.conv2.weight"].flatten(1).any(1).all()
    assert result.masks["conv.weight"].all()
    pruning = result.info["pruning"]  # 9 x 30% of 336 block channels, of 448 in all
    assert pruning["achieved"]["channel_sparsity"] == pytest.approx(102 / 448)
    assert "note" not in pruning  # within 0.1 of the requested 0.3


def test_far_from_the_requested_sparsity_the_report_says_what_stayed_whole():
    result, *_ = _run(l1filter, RESNET, {"name": "l1filter", "sparsity": 0.6, "coupled": False,
                                         "finetune": "0ep"})
    pruning = result.info["pruning"]
    assert pruning["achieved"]["channel_sparsity"] == pytest.approx(201 / 448)
    assert pruning["note"].startswith("channel sparsity 0.45 vs 0.60 requested; left whole: ")
    assert "conv: tied to 4 layers by residual sums (method.coupled=true prunes it)" in \
        pruning["note"]
    assert pruning["macs"]["pruned"] < pruning["macs"]["dense"]


def test_l1filter_coupled_prunes_residual_groups_by_their_summed_norms():
    result, ctx, before = _run(l1filter, RESNET, {"name": "l1filter", "density": 0.5,
                                                  "coupled": True, "finetune": "0ep"})
    assert "conv" in result.info["channels"] and "blocks.3.conv2" in result.info["channels"]
    group = next(g for g in ch.channel_groups(ctx.model, ctx.data.train.x[:1]) if g.name == "conv")
    score = sum(before[f"{layer}.weight"].abs().flatten(1).sum(1) for layer in group.layers)
    gone = _dropped(result, "conv")
    assert sorted(gone) == sorted(torch.argsort(score)[:8].tolist())
    for layer in group.layers:  # every conv adding into the stream loses the same channels
        assert _dropped(result, layer) == gone


def test_pruned_channels_stay_exactly_zero_and_the_export_removes_them():
    result, ctx, _ = _run(l1filter, CONV, {"name": "l1filter", "sparsity": 0.5, "finetune": "2ep"})
    model = ctx.model
    for name in ("features.0", "features.3"):
        gone = _dropped(result, name)
        assert len(gone) == 4
        bn = model.features[int(name.split(".")[1]) + 1]  # BatchNorm after the conv
        assert torch.all(bn.weight[gone] == 0) and torch.all(bn.bias[gone] == 0)
    assert result.masks.density() < 0.7
    x = ctx.data.test.x[:8]
    net, spec = ch.shrink_channels(model, x, result.masks, round_to=1)
    assert [s["kept"] for s in spec["groups"][:2]] == [4, 4]
    with torch.no_grad():
        assert torch.allclose(net.eval()(x), model.eval()(x), rtol=1e-5, atol=1e-6)


def test_layer_sparsity_keep_dense_and_rounding():
    result, *_ = _run(l1filter, CONV, {"name": "l1filter", "sparsity": 0.5, "finetune": "0ep",
                                       "layer_sparsity": {"features.3": 0.25},
                                       "keep_dense": ["features.0"]})
    assert result.info["channels"] == {"features.3": {"kept": 6, "total": 8}}
    result, *_ = _run(l1filter, RESNET, {"name": "l1filter", "sparsity": 0.3, "finetune": "0ep",
                                         "coupled": False, "round_to": 8})
    assert {c["kept"] for c in result.info["channels"].values()} == {8, 24, 48}  # 11, 22, 45


@pytest.mark.parametrize("method,match", [
    ({"sparsity": 0.95}, r"method.sparsity=0.95 would remove all 8 channels of layer 'features.0'"),
    ({"sparsity": 0.95, "round_to": 4}, r"would remove all 8 channels of layer 'features.0'"),
    ({"layer_sparsity": {"features.3": 1.0}}, r"layer_sparsity\['features.3'\]=1 must be in \[0, 1\)"),
    ({"layer_sparsity": {"classifier.0": 0.5}}, r"not a layer l1filter prunes \(its group stays "
                                                r"whole: Linear hidden units \(method.linear"),
    ({"layer_sparsity": {"classifier.4": 0.5}}, r"whole: it is the model's output"),
    ({"keep_dense": ["nope"]}, "no layer named 'nope'"),
])
def test_l1filter_bad_options_are_refused_before_anything_runs(method, match):
    p, ctx = _ctx(CONV, {"name": "l1filter", **method})
    before = {k: v.clone() for k, v in ctx.model.state_dict().items()}
    with pytest.raises(UserError, match=match):
        l1filter.check(p, ctx)
    assert all(torch.equal(v, before[k]) for k, v in ctx.model.state_dict().items())


def test_l1filter_on_a_model_without_conv_layers_points_to_linear():
    p, ctx = _ctx({"model": {"name": "mlp", "hidden": [16]}}, {"name": "l1filter"})
    with pytest.raises(UserError, match="no conv channels.*method.linear=true"):
        l1filter.check(p, ctx)


def test_bn_scale_penalty_adds_the_l1_subgradient():
    bn = nn.BatchNorm1d(4)
    with torch.no_grad():
        bn.weight.copy_(torch.tensor([0.5, -2.0, 0.0, 1.0]))
    bn.weight.grad = torch.tensor([1.0, 1.0, 1.0, 1.0])
    BNScalePenalty([bn.weight], 0.1).after_backward(None)
    assert torch.allclose(bn.weight.grad, torch.tensor([1.1, 0.9, 1.0, 1.1]))


def _set_gammas(model, values: dict[int, list[float]]) -> None:
    with torch.no_grad():
        for index, gammas in values.items():
            model.features[index].weight.copy_(torch.tensor(gammas))


def test_slimming_uses_one_global_threshold_and_guards_every_layer():
    p, ctx = _ctx(CONV, {"name": "slimming", "density": 0.5, "sparsity_train": "0ep",
                         "finetune": "0ep"})
    # features.1 scales all small but one: the global threshold would take 7 of its 8.
    _set_gammas(ctx.model, {1: [0.01, 0.02, 0.03, 0.04, 0.05, 0.06, 0.07, 0.9],
                            4: [0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8]})
    result = slimming.run(p, ctx)
    assert result.info["channels"]["features.0"]["kept"] == 1
    assert _dropped(result, "features.0") == list(range(7))
    assert _dropped(result, "features.3") == [0]
    assert result.info["threshold"] == pytest.approx(0.1)

    p, ctx = _ctx(CONV, {"name": "slimming", "density": 0.2, "sparsity_train": "0ep",
                         "finetune": "0ep", "min_channels": 3})
    _set_gammas(ctx.model, {1: [0.01] * 7 + [0.9], 4: [1.0] * 8})
    result = slimming.run(p, ctx)  # 3 channels of 16 globally, but features.0 keeps 3
    assert result.info["channels"]["features.0"]["kept"] == 3


def test_slimming_penalty_shrinks_the_scales():
    def gamma_l1(penalty):
        p, ctx = _ctx(CONV, {"name": "slimming", "penalty": penalty, "sparsity_train": "3ep",
                             "finetune": "0ep"})
        slimming.run(p, ctx)
        return sum(float(m.weight.detach().abs().sum()) for m in ctx.model.modules()
                   if isinstance(m, nn.BatchNorm2d))
    assert gamma_l1(0.05) < 0.9 * gamma_l1(0.0)


def test_slimming_needs_batchnorm():
    p, ctx = _ctx({"model": {"name": "conv2", "width": 0.125}}, {"name": "slimming"})
    with pytest.raises(UserError, match="affine BatchNorm.*l1filter"):
        slimming.check(p, ctx)


# ---------------------------------------------------------------- physical pruning and reports
def _image_ctx(model: nn.Module, shape=(3, 16, 16), n: int = 64):
    from compress.config import TrainConfig
    from compress.data.base import DataBundle, Split
    gen = torch.Generator().manual_seed(0)
    split = Split(torch.randn(n, *shape, generator=gen), torch.randint(0, 5, (n,), generator=gen))
    data = DataBundle("random", split, split, split, 5, shape)
    return PruneContext(model, data, TrainConfig(batch_size=32, duration="1ep"),
                        MaskSet.ones_like(prunable_parameters(model)), 0, progress=False)


def _tiny(name: str) -> nn.Module:
    from tests.test_chgraph import _build
    return _build(name)[0].train()


def test_layernorm_models_are_cut_physically_and_the_smaller_model_is_fine_tuned():
    from tests.test_chgraph import ConvNeXtish
    model = _tiny("layernorm2d")
    ctx = _image_ctx(model)
    p = L1FilterParams(sparsity=0.5, finetune="1ep")
    result = l1filter.run(p, ctx)
    assert result.architecture is not None
    kept = {name: g["kept"] for name, g in result.info["channels"].items()}
    assert kept == {"stem.0": 4, "mlp.0": 8, "down.1": 6}
    assert (model.stem[0].out_channels, model.stem[1].normalized_shape, model.mlp[0].out_features,
            model.down[1].out_channels) == (4, (4,), 8, 6)
    params = dict(model.named_parameters())
    assert all(m.shape == params[n].shape for n, m in result.masks.items())
    pruning = result.info["pruning"]
    assert pruning["physical"] and pruning["achieved"]["channel_sparsity"] == pytest.approx(0.5)
    assert pruning["achieved"]["macs_ratio"] > 2 and "note" not in pruning
    # The recorded step rebuilds the trained model from a fresh base model.
    from compress.core.surgery import apply, compose
    torch.manual_seed(3)
    rebuilt = apply(ConvNeXtish(), compose(None, result.architecture), ctx.data.train.x[:1])
    rebuilt.load_state_dict(model.state_dict())


def test_masks_stay_where_they_are_exact_and_physical_true_cuts_anyway():
    model = _tiny("se-sigmoid")
    result = l1filter.run(L1FilterParams(sparsity=0.5, finetune="0ep"), _image_ctx(model))
    assert result.architecture is None and not result.info["pruning"]["physical"]
    assert model.expand[0].out_channels == 16 and result.masks.density() < 0.6
    model = _tiny("se-sigmoid")
    result = l1filter.run(L1FilterParams(sparsity=0.5, finetune="0ep", physical=True),
                      _image_ctx(model))
    assert result.architecture is not None and model.expand[0].out_channels == 8
    assert model.se.fc2.out_channels == 8 and result.masks.density() == 1.0


def test_grouped_convs_are_pruned_per_group_and_the_report_is_honest():
    model = _tiny("grouped")
    result = l1filter.run(L1FilterParams(sparsity=0.5, coupled=False, finetune="0ep"),
                      _image_ctx(model))
    assert result.info["channels"]["a.0"] == {"kept": 8, "total": 16}
    w = result.masks["b.0.weight"]  # grouped conv: 2 of 4 input slots alive in every group
    assert [int(w[4 * g:4 * g + 4].flatten(2).any(2).any(0).sum()) for g in range(4)] == [2] * 4
    pruning = result.info["pruning"]  # stem + c are tied by the residual: left whole
    assert pruning["requested"]["channel_sparsity"] == 0.5
    assert pruning["achieved"]["channel_sparsity"] == pytest.approx(16 / 40)
    assert "coupled=true" in pruning["left_whole"]["stem.0"] and "note" not in pruning


def test_vit_prunes_heads_and_mlp_units_with_masks():
    model = _tiny("vit-heads")
    result = l1filter.run(L1FilterParams(sparsity=0.5, heads=0.25, finetune="0ep"),
                      _image_ctx(model))
    chosen = result.info["channels"]
    assert chosen["encoder.layers.encoder_layer_0.self_attention.heads"] == {"kept": 3, "total": 4}
    assert chosen["encoder.layers.encoder_layer_1.mlp.0"] == {"kept": 24, "total": 48}
    rows = result.masks["encoder.layers.encoder_layer_0.self_attention.in_proj_weight"]
    assert int(rows.any(1).sum()) == 3 * 3 * 8  # q, k, v rows of 3 heads of 8 dims
    pruning = result.info["pruning"]
    assert pruning["achieved"]["heads_sparsity"] == 0.25
    assert "fixed width 32" in pruning["left_whole"]["conv_proj"]
