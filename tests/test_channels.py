"""Channel groups, channel masks and the verified CNN shrink (compress.core.channels) on the
project's conv nets and the four torchvision targets: dropped channels are physically removed,
the output is unchanged, rounding pads with dead channels, and what cannot be shrunk says so."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from compress.core import channels as ch
from compress.core.masking import apply_masks
from compress.core.structure import count_macs
from compress.errors import UserError
from compress.models.base import build_model

SHAPE = (3, 32, 32)
MODELS = [("conv2", {"width": 0.25}), ("conv4", {"width": 0.25, "batchnorm": True}),
          ("resnet20", {}), ("resnet18c", {"width": 0.25}), ("torchvision:resnet18", {}),
          ("torchvision:resnet50", {}), ("torchvision:vgg16_bn", {}),
          ("torchvision:mobilenet_v2", {})]


def _model(name: str, opts: dict, seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    model = build_model(name, opts, SHAPE, 10).eval()
    with torch.no_grad():  # BatchNorm statistics that are not the identity
        for m in model.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.affine:
                m.running_mean.uniform_(-0.5, 0.5)
                m.running_var.uniform_(0.5, 2.0)
                m.bias.uniform_(-0.5, 0.5)
    return model


def _random_drop(groups, fraction: float, seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {gr.name: torch.randperm(gr.size, generator=g)[:int(gr.size * fraction)]
            for gr in groups}


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).abs().max() / b.abs().max())


@pytest.mark.parametrize("name,opts", MODELS, ids=[m[0] for m in MODELS])
def test_dropped_channels_are_removed_and_the_output_is_unchanged(name, opts):
    model = _model(name, opts)
    x = torch.randn(3, *SHAPE)
    groups = ch.channel_groups(model, x)
    assert groups, name
    drop = _random_drop(groups, 0.4)
    masks = ch.channel_masks(model, x, drop, groups)
    net, spec = ch.shrink_channels(model, x, masks, round_to=1)
    masked = _model(name, opts)
    apply_masks(masked, masks)
    with torch.no_grad():
        assert _rel(net(x), masked(x)) <= 1e-5
    plan = {s["group"]: s for s in spec["groups"]}
    for gr in groups:  # exactly the dropped channels went, and nothing else
        assert sorted(plan[gr.name]["removed"]) == sorted(drop[gr.name].tolist()), gr.name
        assert plan[gr.name]["kept"] == gr.size - len(drop[gr.name])
    assert spec["params"]["shrunk"] == sum(p.numel() for p in net.parameters())
    assert spec["params"]["shrunk"] < 0.75 * spec["params"]["dense"]
    assert spec["macs"]["shrunk"] == count_macs(net, x[:1]) < 0.75 * spec["macs"]["dense"]


def test_residual_groups_couple_every_conv_of_a_stage():
    model = _model("resnet20", {})
    groups = {g.name: g for g in ch.channel_groups(model, torch.randn(1, *SHAPE))}
    stem = groups["conv"]  # the stem's channels run through every block of stage 1
    assert stem.layers == ["conv", "blocks.0.conv2", "blocks.1.conv2", "blocks.2.conv2"]
    stage2 = groups["blocks.3.conv2"]  # from the projection shortcut on
    assert stage2.layers == ["blocks.3.conv2", "blocks.3.shortcut.0", "blocks.4.conv2",
                             "blocks.5.conv2"]
    singles = sorted(n for n, g in groups.items() if len(g.layers) == 1)
    assert singles == [f"blocks.{i}.conv1" for i in range(9)]  # each block's first conv


@pytest.mark.parametrize("round_to", [4, 8])
def test_rounding_keeps_multiples_and_pads_with_dead_channels(round_to):
    model = _model("torchvision:resnet18", {})
    x = torch.randn(2, *SHAPE)
    groups = ch.channel_groups(model, x)
    masks = ch.channel_masks(model, x, _random_drop(groups, 0.37, seed=1), groups)
    net, spec = ch.shrink_channels(model, x, masks, round_to=round_to)
    for s in spec["groups"]:
        alive = s["original"] - s["dead"]
        assert s["kept"] % round_to == 0 and alive <= s["kept"] < alive + round_to
        assert len(s["removed"]) == s["original"] - s["kept"]
    masked = _model("torchvision:resnet18", {})
    apply_masks(masked, masks)
    with torch.no_grad():
        assert _rel(net(x), masked(x)) <= 1e-5


def test_rounded_width():
    assert ch.rounded_width(45, 64, 8) == 48
    assert ch.rounded_width(0, 64, 8) == 8   # at least one channel, rounded
    assert ch.rounded_width(61, 64, 8) == 64  # never more than the layer has
    assert ch.rounded_width(45, 64, 1) == 45


class _Chain(nn.Module):
    def __init__(self):
        super().__init__()
        self.a = nn.Conv2d(3, 6, 3, padding=1)
        self.b = nn.Conv2d(6, 5, 3, padding=1)
        self.head = nn.Linear(5 * 4 * 4, 3)

    def forward(self, x):
        x = torch.relu(self.a(x))
        x = torch.nn.functional.max_pool2d(torch.relu(self.b(x)), 2)
        return self.head(x.flatten(1))


def _dead_channels(model: nn.Module, x: torch.Tensor, masks: dict) -> dict[str, list[int]]:
    """Per exact group, the units whose output is provably zero under `masks`."""
    state = {**dict(model.named_parameters()), **dict(model.named_buffers())}
    return {g.name: torch.nonzero(~ch.alive_units(g, state, masks)).flatten().tolist()
            for g in ch.channel_groups(model, x) if g.exact}


def test_unread_channels_go_and_constant_read_channels_stay():
    torch.manual_seed(0)
    net = _Chain().eval()
    x = torch.randn(4, 3, 8, 8)
    masks = {n: torch.ones_like(p, dtype=torch.bool) for n, p in net.named_parameters()}
    masks["a.weight"][1] = False          # channel a1: no filter, but a live bias: constant, read
    masks["b.weight"][:, 2] = False       # channel a2: nobody reads it (its filter is alive)
    masks["head.weight"].view(3, 5, 16)[:, 4] = False  # channel b4: unread after the flatten
    dead = _dead_channels(net, x, masks)
    assert dead == {"a": [2], "b": [4]}
    small, spec = ch.shrink_channels(net, x, masks, round_to=1)
    assert (small.a.out_channels, small.b.out_channels, small.head.in_features) == (5, 4, 64)
    ref = _Chain()
    ref.load_state_dict(net.state_dict())
    apply_masks(ref, masks)
    with torch.no_grad():
        assert _rel(small(x), ref.eval()(x)) <= 1e-6


def test_channel_masks_cover_producers_and_readers():
    model = _model("conv4", {"width": 0.25, "batchnorm": True})
    x = torch.randn(1, *SHAPE)
    masks = ch.channel_masks(model, x, {"features.0": [0, 3]})
    assert set(masks) == {"features.0.weight", "features.1.weight", "features.1.bias",
                          "features.3.weight"}
    assert not masks["features.0.weight"][[0, 3]].any() and masks["features.0.weight"][1].all()
    assert not masks["features.1.bias"][[0, 3]].any()
    assert not masks["features.3.weight"][:, [0, 3]].any() and masks["features.3.weight"][:, 1].all()
    only_out = ch.channel_masks(model, x, {"features.0": [0]}, consumers=False)
    assert "features.3.weight" not in only_out


def test_bad_channel_requests_are_one_line_user_errors():
    model = _model("conv2", {"width": 0.25})
    x = torch.randn(1, *SHAPE)
    with pytest.raises(UserError, match="would empty it"):
        ch.channel_masks(model, x, {"features.0": list(range(16))})
    with pytest.raises(UserError, match="no prunable channel group 'nope'"):
        ch.channel_masks(model, x, {"nope": [0]})
    with pytest.raises(UserError, match="out of range"):
        ch.channel_masks(model, x, {"features.0": [99]})
    with pytest.raises(UserError, match="round_to must be >= 1"):
        ch.shrink_channels(model, x, None, round_to=0)


@pytest.mark.parametrize("layer,reason", [
    (nn.LayerNorm([4, 8, 8]), "LayerNorm '1' normalises them together with other dims"),
    (nn.ConvTranspose2d(4, 4, 1), "its channels pass through ConvTranspose2d '1'")],
    ids=["layernorm", "convtranspose"])
def test_layers_the_shrink_cannot_cut_leave_their_group_whole_with_the_reason(layer, reason):
    model = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), layer, nn.Flatten(), nn.Linear(256, 2))
    x = torch.randn(1, 3, 8, 8)
    masks = {"0.weight": torch.ones(4, 3, 3, 3, dtype=torch.bool)}
    masks["0.weight"][1] = False
    _, spec = ch.shrink_channels(model, x, masks, round_to=1)
    assert spec["left_whole"]["0"] == reason
    assert spec["channels"]["kept"] == spec["channels"]["total"]


class _Branchy(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3)

    def forward(self, x):
        return self.conv(x) if x.sum() > 0 else -self.conv(x)  # data-dependent: fx cannot trace


def test_a_model_fx_cannot_trace_is_named_with_the_masks_only_option():
    from compress.core.shrink import shrink
    with pytest.raises(ch.ShrinkUnsupported, match=r"cannot trace _Branchy.*export.shrink=false"):
        shrink(_Branchy(), None, torch.randn(1, 3, 8, 8), strict=True)
    model, spec = shrink(_Branchy(), None, torch.randn(1, 3, 8, 8))
    assert spec["shrunk"] is False and "cannot trace _Branchy" in spec["reason"]


def test_shrunk_models_export_to_onnx_with_parity(tmp_path):
    from compress.export.onnx import check_parity, export_onnx
    for name in ("torchvision:resnet18", "torchvision:mobilenet_v2"):
        model = _model(name, {})
        x = torch.randn(4, *SHAPE)
        groups = ch.channel_groups(model, x)
        masks = ch.channel_masks(model, x, _random_drop(groups, 0.5, seed=2), groups)
        net, spec = ch.shrink_channels(model, x, masks)
        path = export_onnx(net, x[:2], tmp_path / f"{name.split(':')[1]}.onnx")
        apply_masks(model, masks)
        assert check_parity(path, model, x, rtol=1e-5) <= 1e-5
