"""Vision models: LeNet-300-100, Conv-2/4/6, CIFAR ResNets and torchvision:NAME."""

from __future__ import annotations

import socket

import pydantic
import pytest
import torch
from torch import nn

from compress.errors import UserError
from compress.models import build_model
from compress.models.mlp import MLP
from compress.registry import MODELS

VISION = ["lenet300", "conv2", "conv4", "conv6", "resnet20", "resnet18c"]


def n_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


@pytest.mark.parametrize("name", VISION)
def test_builds_runs_and_backprops_for_binary_and_ten_classes(name):
    shape = tuple(MODELS.get(name).defaults["example_shape"])
    torch.manual_seed(0)
    x = torch.randn(2, *shape)
    binary = build_model(name, {}, shape, 2)
    assert binary(x[:1]).shape == (1, 1)
    model = build_model(name, {}, shape, 10)
    out = model(x)
    assert out.shape == (2, 10) and out.dtype == torch.float32
    out.sum().backward()
    grads = [p.grad for p in model.parameters()]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)
    assert any(g.abs().sum() > 0 for g in grads)


def test_conv_nets_follow_the_lottery_ticket_layout():
    m = build_model("conv6", {}, (3, 32, 32), 10)
    convs = [mod for mod in m.modules() if isinstance(mod, nn.Conv2d)]
    fcs = [mod for mod in m.modules() if isinstance(mod, nn.Linear)]
    assert [c.out_channels for c in convs] == [64, 64, 128, 128, 256, 256]
    assert all(c.kernel_size == (3, 3) and c.padding == (1, 1) for c in convs)
    assert [(f.in_features, f.out_features) for f in fcs] == [(256 * 4 * 4, 256), (256, 256), (256, 10)]
    assert not any(isinstance(mod, nn.BatchNorm2d) for mod in m.modules())
    # the output layer is the last Linear registered (what the pruning methods take as output)
    assert list(dict(m.named_modules()).values())[-1] is fcs[-1]
    conv2 = build_model("conv2", {"batchnorm": True}, (1, 28, 28), 10)  # MNIST-sized input works
    assert sum(isinstance(mod, nn.BatchNorm2d) for mod in conv2.modules()) == 2
    assert conv2.classifier[0].in_features == 64 * 14 * 14
    assert conv2(torch.randn(2, 1, 28, 28)).shape == (2, 10)


def test_glorot_init_is_the_default_and_pytorch_init_is_an_option():
    torch.manual_seed(0)
    glorot = build_model("lenet300", {}, (1, 28, 28), 10)
    plain = build_model("lenet300", {"init": "pytorch"}, (1, 28, 28), 10)
    first_g, first_p = glorot.layers[0], plain.layers[0]
    assert torch.all(first_g.bias == 0) and first_p.bias.abs().sum() > 0
    expected = (2 / (784 + 300)) ** 0.5
    assert abs(first_g.weight.std().item() - expected) < 0.05 * expected


def test_lenet300_is_the_project_mlp():
    m = build_model("lenet300", {}, (1, 28, 28), 10)
    assert type(m) is MLP  # so structural shrink / CPNA apply unchanged
    assert [(l.in_features, l.out_features) for l in m.layers] == [(784, 300), (300, 100), (100, 10)]
    assert n_params(m) == 266_610


def test_resnets_have_the_paper_shapes():
    r20 = build_model("resnet20", {}, (3, 32, 32), 10)
    convs = [mod for mod in r20.modules() if isinstance(mod, nn.Conv2d)]
    # 19 3x3 convs (stem + 9 blocks x 2) + 2 projection shortcuts (option B); 20 with the fc
    assert sum(c.kernel_size == (3, 3) for c in convs) == 19
    assert sum(c.kernel_size == (1, 1) for c in convs) == 2
    assert 0.27e6 < n_params(r20) < 0.28e6  # He et al.: 0.27M
    r18 = build_model("resnet18c", {}, (3, 32, 32), 10)
    assert r18.conv.kernel_size == (3, 3) and not any(isinstance(m, nn.MaxPool2d) for m in r18.modules())
    assert 11.1e6 < n_params(r18) < 11.2e6
    assert r18.fc.in_features == 512


@pytest.mark.parametrize("name,width,low,high", [("conv4", 0.5, 0.23, 0.27),
                                                 ("resnet18c", 0.5, 0.24, 0.26),
                                                 ("resnet20", 2.0, 3.9, 4.1)])
def test_width_scales_parameter_count_quadratically(name, width, low, high):
    base = n_params(build_model(name, {}, (3, 32, 32), 10))
    scaled = n_params(build_model(name, {"width": width}, (3, 32, 32), 10))
    assert low < scaled / base < high


def test_tiny_width_keeps_at_least_one_channel():
    m = build_model("conv2", {"width": 0.001}, (3, 32, 32), 10)
    assert m(torch.randn(1, 3, 32, 32)).shape == (1, 10)
    assert min(mod.out_channels for mod in m.modules() if isinstance(mod, nn.Conv2d)) == 1


@pytest.mark.parametrize("name", ["conv2", "conv6", "resnet20", "resnet18c"])
def test_flat_input_is_a_user_error(name):
    with pytest.raises(UserError, match=rf"^{name} needs image input \(C, H, W\); dataset gives \(12,\)$"):
        build_model(name, {}, (12,), 10)


def test_too_small_image_and_bad_options():
    with pytest.raises(UserError, match="at least 8x8"):
        build_model("conv6", {}, (1, 4, 4), 10)
    with pytest.raises(pydantic.ValidationError):
        build_model("conv4", {"widht": 2}, (3, 32, 32), 10)
    with pytest.raises(pydantic.ValidationError):
        build_model("resnet20", {"width": 0}, (3, 32, 32), 10)


@pytest.fixture
def no_network(monkeypatch):
    def refuse(*a, **k):
        raise AssertionError("tried to use the network")
    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", refuse)


def test_torchvision_resnet18_builds_random_init_without_downloading(no_network):
    entry = MODELS.get("torchvision:resnet18")
    assert entry.defaults["example_shape"] == [3, 32, 32]
    torch.manual_seed(0)
    model = build_model("torchvision:resnet18", {}, (3, 32, 32), 10)
    assert model.fc.out_features == 10 and model.training
    out = model(torch.randn(2, 3, 32, 32))
    assert out.shape == (2, 10)
    out.sum().backward()
    assert model.conv1.weight.grad is not None


def test_torchvision_errors_are_one_line_user_errors(no_network):
    with pytest.raises(UserError) as e:
        MODELS.get("torchvision:resnet19")
    assert str(e.value) == ("unknown torchvision model 'resnet19'; e.g. resnet18, vgg16_bn, "
                            "mobilenet_v2 (see torchvision.models.list_models())")
    with pytest.raises(UserError, match="unknown torchvision model"):
        MODELS.get("torchvision:fasterrcnn_resnet50_fpn")  # detection, not classification
    with pytest.raises(UserError, match=r"needs 3-channel images .* \(1, 28, 28\)"):
        build_model("torchvision:resnet18", {}, (1, 28, 28), 10)
    with pytest.raises(UserError, match=r"^torchvision:squeezenet1_1 needs image input"):
        build_model("torchvision:squeezenet1_1", {}, (12,), 10)
    with pytest.raises(UserError) as e:  # too small for alexnet: caught at build time
        build_model("torchvision:alexnet", {}, (3, 16, 16), 10)
    assert str(e.value).startswith("torchvision:alexnet cannot take (3, 16, 16) images:")
    assert "\n" not in str(e.value)
    with pytest.raises(pydantic.ValidationError, match="never downloaded"):
        build_model("torchvision:resnet18", {"weights": "DEFAULT"}, (3, 32, 32), 10)


def test_torchvision_names_resolve_through_the_config():
    from compress.config import resolve
    cfg = resolve({"model": {"name": "torchvision:squeezenet1_1"}})
    assert cfg.model == {"name": "torchvision:squeezenet1_1"}
    with pytest.raises(UserError, match="pretrained weights are never downloaded"):
        resolve({"model": {"name": "torchvision:resnet18", "weights": "DEFAULT"}})


def test_torchvision_and_mlxtend_are_imported_lazily():
    """No module-level import of either, so importing compress.models / compress.data stays light."""
    import ast
    from pathlib import Path

    import compress
    base = Path(compress.__file__).parent
    for rel in ("models/lenet.py", "models/convnets.py", "models/resnet_cifar.py",
                "models/torchvision_models.py", "data/mnist.py", "data/cifar.py"):
        tree = ast.parse((base / rel).read_text())
        for node in tree.body:
            if isinstance(node, (ast.Import, ast.ImportFrom)):
                names = [a.name for a in node.names] + [getattr(node, "module", None) or ""]
                assert not any(n.split(".")[0] in ("torchvision", "mlxtend") for n in names), rel
