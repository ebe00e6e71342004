"""The channel dependency graph (compress.core.chgraph), physical surgery and its replayable
spec (compress.core.surgery), over one architecture per pattern: squeeze-excitation with
Sigmoid and Hardsigmoid gates, LayerNorm2d, grouped convs, channel shuffle, depthwise convs,
ViT attention heads. Tiny custom modules and a few torchvision models at 32x32, so the loop
stays fast.

For every architecture: the groups cover what they should; masking half of every exact
group's units and shrinking gives the masked model's output; cutting half of every group
(exact or not) gives a working smaller model that `surgery.apply` rebuilds bit for bit from
the base model and the spec.
"""

from __future__ import annotations

import copy

import pytest
import torch
import torchvision
from torch import nn
from torchvision.models.convnext import LayerNorm2d
from torchvision.ops import SqueezeExcitation

from compress.core import channels as ch
from compress.core import surgery
from compress.core.chgraph import analyse, cell_counts
from compress.core.masking import apply_masks
from compress.core.structure import count_macs


class SENet(nn.Module):
    """conv -> BN -> SiLU -> depthwise -> squeeze-excitation gate -> projection, residual."""

    def __init__(self, gate: type[nn.Module]):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.SiLU())
        self.expand = nn.Sequential(nn.Conv2d(8, 16, 1), nn.BatchNorm2d(16), nn.SiLU())
        self.dw = nn.Sequential(nn.Conv2d(16, 16, 3, padding=1, groups=16), nn.BatchNorm2d(16),
                                nn.SiLU())
        self.se = SqueezeExcitation(16, 4, activation=nn.SiLU, scale_activation=gate)
        self.project = nn.Sequential(nn.Conv2d(16, 8, 1), nn.BatchNorm2d(8))
        self.head = nn.Linear(8, 5)

    def forward(self, x):
        x = self.stem(x)
        x = x + self.project(self.se(self.dw(self.expand(x))))
        return self.head(x.mean((2, 3)))


class ConvNeXtish(nn.Module):
    """LayerNorm2d between stages; a block of depthwise conv, LayerNorm, Linear-GELU-Linear
    on channels-last tokens, a layer-scale parameter and a residual sum."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 8, 4, stride=4), LayerNorm2d(8))
        self.dw = nn.Conv2d(8, 8, 3, padding=1, groups=8)
        self.norm = nn.LayerNorm(8)
        self.mlp = nn.Sequential(nn.Linear(8, 16), nn.GELU(), nn.Linear(16, 8))
        self.scale = nn.Parameter(torch.full((8, 1, 1), 0.5))
        self.down = nn.Sequential(LayerNorm2d(8), nn.Conv2d(8, 12, 2, stride=2))
        self.head = nn.Linear(12, 5)

    def forward(self, x):
        x = self.stem(x)
        y = self.mlp(self.norm(self.dw(x).permute(0, 2, 3, 1))).permute(0, 3, 1, 2)
        x = x + self.scale * y
        return self.head(self.down(x).mean((2, 3)))


class GroupedNet(nn.Module):
    """A ResNeXt bottleneck: 1x1, grouped 3x3 (4 groups), 1x1, residual."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU())
        self.a = nn.Sequential(nn.Conv2d(8, 16, 1), nn.BatchNorm2d(16), nn.ReLU())
        self.b = nn.Sequential(nn.Conv2d(16, 16, 3, padding=1, groups=4), nn.BatchNorm2d(16),
                               nn.ReLU())
        self.c = nn.Sequential(nn.Conv2d(16, 8, 1), nn.BatchNorm2d(8))
        self.head = nn.Linear(8 * 4 * 4, 5)

    def forward(self, x):
        x = self.stem(x)
        x = torch.relu(x + self.c(self.b(self.a(x))))
        return self.head(nn.functional.adaptive_avg_pool2d(x, 4).flatten(1))


def _branch(cin: int, cout: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, 1), nn.BatchNorm2d(cout), nn.ReLU(),
                         nn.Conv2d(cout, cout, 3, padding=1, groups=cout), nn.BatchNorm2d(cout),
                         nn.Conv2d(cout, cout, 1), nn.BatchNorm2d(cout), nn.ReLU())


class ShuffleNetish(nn.Module):
    """ShuffleNetV2 units: chunk in two, transform one half, concat, channel shuffle."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU())
        self.b1, self.b2 = _branch(8, 8), _branch(8, 8)
        self.head = nn.Linear(16, 5)

    def forward(self, x):
        from torchvision.models.shufflenetv2 import channel_shuffle
        x = self.stem(x)
        for branch in (self.b1, self.b2):
            left, right = x.chunk(2, dim=1)
            x = channel_shuffle(torch.cat((left, branch(right)), 1), 2)
        return self.head(x.mean((2, 3)))


def _vit() -> nn.Module:
    from torchvision.models.vision_transformer import VisionTransformer
    return VisionTransformer(image_size=16, patch_size=4, num_layers=2, num_heads=4,
                             hidden_dim=32, mlp_dim=48, num_classes=5)


def _tv(name: str):
    return lambda: torchvision.models.get_model(name, weights=None, num_classes=5)


ARCHS = {
    "se-sigmoid": (lambda: SENet(nn.Sigmoid), 16),
    "se-hardsigmoid": (lambda: SENet(nn.Hardsigmoid), 16),
    "layernorm2d": (ConvNeXtish, 16),
    "grouped": (GroupedNet, 16),
    "shuffle": (ShuffleNetish, 16),
    "vit-heads": (_vit, 16),
    "mobilenet_v3_small": (_tv("mobilenet_v3_small"), 32),
    "shufflenet_v2_x0_5": (_tv("shufflenet_v2_x0_5"), 32),
    "regnet_y_400mf": (_tv("regnet_y_400mf"), 32),
}


def _build(name: str, seed: int = 0) -> tuple[nn.Module, torch.Tensor]:
    factory, size = ARCHS[name]
    torch.manual_seed(seed)
    model = factory().eval()
    with torch.no_grad():  # weights and statistics far from their init (zero heads, unit BN)
        for p in model.parameters():
            p.normal_(0, 0.2)
        for m in model.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm):
                m.running_mean.uniform_(-0.5, 0.5)
                m.running_var.uniform_(0.5, 2.0)
    x = torch.randn(3, 3, size, size, generator=torch.Generator().manual_seed(seed))
    return model, x


def _half(g, seed: int = 0) -> list[int]:
    """Half the units of group g, at random, the same share of every cell."""
    gen = torch.Generator().manual_seed(seed)
    if g.cells is None:
        return torch.randperm(g.size, generator=gen)[:g.size // 2].tolist()
    out = []
    for c, k in enumerate(cell_counts(g.cells, 0.5).tolist()):
        units = torch.nonzero(g.cells == c).flatten()
        out += units[torch.randperm(len(units), generator=gen)[k:]].tolist()
    return out


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).abs().max() / b.abs().max())


@pytest.mark.parametrize("name", ARCHS)
def test_masking_half_of_every_exact_group_shrinks_to_the_same_function(name):
    model, x = _build(name)
    groups = [g for g in ch.channel_groups(model, x) if g.exact]
    assert groups
    drop = {g.name: _half(g) for g in groups}
    masks = ch.channel_masks(model, x, drop, groups)
    net, spec = ch.shrink_channels(model, x, masks, round_to=1)
    masked = copy.deepcopy(model)
    apply_masks(masked, masks)
    with torch.no_grad():
        assert _rel(net(x), masked(x)) <= 1e-5
    plan = {s["group"]: s for s in spec["groups"]}
    for g in groups:  # exactly the dropped units went
        assert sorted(plan[g.name]["removed"]) == sorted(drop[g.name]), g.name
    assert spec["macs"]["shrunk"] == count_macs(net, x[:1]) < 0.8 * spec["macs"]["dense"]


@pytest.mark.parametrize("name", ARCHS)
def test_cutting_every_group_replays_from_the_spec_bit_for_bit(name):
    model, x = _build(name)
    graph = analyse(model, x, "hint")
    removed = {g.name: _half(g, seed=1) for g in graph.groups}
    step = surgery.step(graph, removed)
    spec = surgery.compose(None, step)
    small = copy.deepcopy(model)
    surgery.cut(small, graph, removed)
    with torch.no_grad():
        y = small(x)
    assert y.shape == (3, 5) and torch.isfinite(y).all()
    assert count_macs(small, x[:1]) < 0.8 * count_macs(model, x[:1])
    # The same base model and spec rebuild it; its state dict loads strictly.
    rebuilt = surgery.apply(_build(name, seed=7)[0], spec, torch.zeros(1, *x.shape[1:]))
    rebuilt.load_state_dict(small.state_dict())
    with torch.no_grad():
        assert torch.equal(rebuilt.eval()(x), y)
    assert {k: v.shape for k, v in rebuilt.state_dict().items()} == \
        {k: v.shape for k, v in small.state_dict().items()}


def _group(graph, name: str):
    return next(g for g in graph.groups if g.name == name)


def test_gates_couple_their_excitation_with_the_channels_they_scale():
    for gate in (nn.Sigmoid, nn.Hardsigmoid):
        model, x = _build("se-sigmoid" if gate is nn.Sigmoid else "se-hardsigmoid")
        graph = analyse(model, x, "hint")
        expand = _group(graph, "expand.0")  # expand, depthwise, excite gate, projection input
        params = {m.param for m in expand.members}
        assert {"expand.0.weight", "dw.0.weight", "se.fc2.weight", "se.fc2.bias",
                "se.fc1.weight", "project.0.weight"} <= params
        assert expand.exact and expand.zero_flows  # zero x gate = zero
        assert _group(graph, "se.fc1").size == 4  # the squeeze units are a group too


def test_layernorm_groups_are_inexact_and_name_the_norm():
    model, x = _build("layernorm2d")
    graph = analyse(model, x, "hint")
    stream = _group(graph, "stem.0")
    assert not stream.exact and "LayerNorm" in stream.inexact
    assert {"stem.1.weight", "norm.weight", "scale", "mlp.2.weight", "down.0.weight"} <= \
        {m.param for m in stream.members}
    assert _group(graph, "mlp.0").exact  # the MLP's hidden units only meet GELU


def test_grouped_conv_groups_keep_the_same_share_of_every_conv_group():
    model, x = _build("grouped")
    graph = analyse(model, x, "hint")
    a = _group(graph, "a.0")
    assert a.cells is not None and int(a.cells.max()) + 1 == 4  # the 4 groups of conv b
    bad = [u for u in range(16) if int(a.cells[u]) == 0][:2]  # two units from one block only
    with pytest.raises(Exception, match="same share"):
        surgery.cut(copy.deepcopy(model), graph, {"a.0": bad})
    small = copy.deepcopy(model)
    surgery.cut(small, graph, {"a.0": _half(a), "b.0": _half(_group(graph, "b.0"))})
    assert (small.b[0].in_channels, small.b[0].out_channels, small.b[0].groups) == (8, 8, 4)


def test_channel_shuffle_ties_the_halves_it_interleaves():
    model, x = _build("shuffle")
    graph = analyse(model, x, "hint")
    stream = _group(graph, "stem.0")
    # After the shuffle, position 2i and 2i+1 come from the two halves: one unit each pair,
    # so the 16 stem channels form 8 + ... units and chunks stay even.
    assert stream.size < 16 + 8 + 8 and stream.cells is not None


def test_vit_heads_are_groups_and_the_stream_stays_whole_with_the_reason():
    model, x = _build("vit-heads")
    graph = analyse(model, x, "hint")
    heads = [g for g in graph.groups if g.kind == "heads"]
    assert [g.size for g in heads] == [4, 4]
    assert "reshapes them to the fixed width 32" in graph.whole["conv_proj"]
    mlp = _group(graph, "encoder.layers.encoder_layer_0.mlp.0")
    assert mlp.size == 48 and mlp.exact


def test_vit_with_pruned_heads_exports_to_onnx_with_parity(tmp_path):
    from compress.export.onnx import check_parity, export_onnx
    model, x = _build("vit-heads")
    groups = ch.channel_groups(model, x)
    masks = ch.channel_masks(model, x, {g.name: _half(g) for g in groups}, groups)
    net, spec = ch.shrink_channels(model, x, masks, round_to=1)
    assert spec["heads"] == {"total": 8, "kept": 4}
    attn = net.encoder.layers[0].self_attention
    assert type(attn).__name__ == "PrunedAttention" and attn.num_heads == 2
    apply_masks(model, masks)
    path = export_onnx(net, x, tmp_path / "vit.onnx")
    assert check_parity(path, model, x, rtol=1e-5) <= 1e-5


def test_spec_naming_an_unknown_group_is_one_line():
    model, x = _build("grouped")
    spec = {"format": 1, "steps": [{"groups": {"nope": {"size": 3, "kept": [0]}}}]}
    with pytest.raises(Exception, match=r"names 'nope'.*keep model\.\* as in the run"):
        surgery.apply(model, spec, x[:1])
