"""Width rounding at export (compress.core.widths, export.round) and the shrink entry point
(compress.core.shrink): rounding must not cancel the pruning it follows; rounding down drops
live channels and says so; the default exporter handles what torchscript cannot express."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from compress.core import channels as ch
from compress.core.masking import apply_masks
from compress.core.shrink import reference, shrink
from compress.core.structure import count_macs


class Plain(nn.Module):
    """Four 3x3 convs of 32 channels: 30% channel sparsity keeps 22 of 32, which rounding up
    to 16 turns back into 32 (densenet's growth layers, in small)."""

    def __init__(self):
        super().__init__()
        self.convs = nn.Sequential(*[m for i in range(4) for m in (
            nn.Conv2d(3 if i == 0 else 32, 32, 3, padding=1), nn.ReLU())])
        self.head = nn.Linear(32, 4)

    def forward(self, x):
        return self.head(self.convs(x).mean((2, 3)))


@pytest.fixture(scope="module")
def pruned():
    torch.manual_seed(0)
    model = Plain().eval()
    x = torch.randn(2, 3, 8, 8)
    groups = ch.channel_groups(model, x)
    gen = torch.Generator().manual_seed(0)
    drop = {g.name: torch.randperm(32, generator=gen)[:10].tolist() for g in groups}
    masks = ch.channel_masks(model, x, drop, groups)
    apply_masks(model, masks)
    return model, masks, x


def _macs(net, x) -> int:
    return count_macs(net, x[:1])


def test_rounding_up_cancels_the_pruning_and_the_budget_rule_does_not(pruned):
    model, masks, x = pruned
    exact, _ = shrink(model, masks, x, round_to=1)
    _, up = shrink(model, masks, x, round_to=16, rounding="up")
    assert up["shrunk"] is False  # 22 live -> 32: nothing left to remove
    net, spec = shrink(model, masks, x, round_to=16)  # the default rule: budget
    assert spec["rounding"] == "budget" and spec["shrunk"]
    assert _macs(net, x) <= 1.1 * _macs(exact, x)
    with torch.no_grad():
        assert torch.allclose(net(x), model(x), atol=1e-5)
    net, spec = shrink(model, masks, x, round_to=16, rounding="budget", budget=10.0)
    assert [g["kept"] for g in spec["groups"]] == [32, 32, 32, 32]  # enough budget: all up


@pytest.mark.parametrize("rule,kept", [("down", 16), ("nearest", 16)])
def test_rounding_down_drops_live_channels_and_names_them(pruned, rule, kept):
    model, masks, x = pruned
    net, spec = shrink(model, masks, x, round_to=16, rounding=rule)
    assert [g["kept"] for g in spec["groups"]] == [kept] * 4
    assert sorted(spec["live_removed"]) == ["convs.0", "convs.2", "convs.4", "convs.6"]
    assert all(len(v) == 22 - kept for v in spec["live_removed"].values())
    ref = reference(model, spec, x)
    with torch.no_grad():
        assert torch.allclose(net(x), ref(x), atol=1e-5)
        assert not torch.allclose(net(x), model(x), atol=1e-5)


def test_unknown_rules_are_refused():
    from compress.core.widths import rule
    from compress.errors import UserError
    with pytest.raises(UserError, match="unknown width rule 'sideways'"):
        rule("sideways", 8)


def test_vgg16_bn_at_cifar_size_exports_with_the_default_exporter(tmp_path):
    """torchscript cannot export adaptive_avg_pool2d from 1x1 to 7x7; `auto` falls back to
    dynamo. (A 0.9-sparse vgg16_bn keeps the test small: the op is the same.)"""
    import torchvision

    from compress.core.chgraph import analyse
    from compress.core.surgery import cut
    from compress.export.onnx import check_parity, export_onnx
    torch.manual_seed(0)
    net = torchvision.models.vgg16_bn(num_classes=10).eval()
    x = torch.randn(2, 3, 32, 32)
    graph = analyse(net, x, "hint")
    cut(net, graph, {g.name: list(range(g.size // 10, g.size)) for g in graph.groups})
    with pytest.raises(Exception, match="adaptive_avg_pool2d"):
        export_onnx(net, x, tmp_path / "ts.onnx", exporter="torchscript")
    path = export_onnx(net, x, tmp_path / "vgg.onnx")
    assert check_parity(path, net, x, rtol=1e-5) <= 1e-5


def test_the_fallback_prints_nothing(tmp_path, capfd):
    """torchscript dumps its whole IR graph from C++ when an op fails; none of it may reach
    stdout (--json) or stderr."""
    from compress.export.onnx import export_onnx
    model = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.AdaptiveAvgPool2d(7), nn.Flatten(),
                          nn.Linear(196, 2)).eval()
    capfd.readouterr()
    export_onnx(model, torch.randn(2, 3, 1, 1), tmp_path / "m.onnx")
    out, err = capfd.readouterr()
    assert (out, err) == ("", "")


def test_latency_aware_widths_pick_per_group_among_exact_8_and_16(pruned):
    from compress.export.latency_widths import measured_widths
    model, masks, x = pruned
    widths = measured_widths(model, masks, x, rounds=2, batch=2, max_groups=2)
    net, spec = shrink(model, masks, x, round_to=1, rounding="latency", widths=widths)
    assert spec["rounding"] == "latency" and "live_removed" not in spec
    assert all(g["kept"] in (22, 24, 32) for g in spec["groups"])  # exact, next 8, next 16
    with torch.no_grad():
        assert torch.allclose(net(x), model(x), atol=1e-5)
