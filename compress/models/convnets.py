"""Conv-2 / Conv-4 / Conv-6: the VGG-like CIFAR-10 nets of the lottery-ticket paper.

Frankle & Carbin (2019), Figure 2: pairs of 3x3 convolutions (padding 1) with 64, 128 and 256
channels, each pair followed by 2x2 max-pooling (Conv-2: one pair, Conv-4: two, Conv-6: three),
then fully connected layers 256 -> 256 -> out, ReLU throughout. The paper initialises every
network with Gaussian Glorot (`init: glorot`, biases zero as in its TensorFlow reference code);
`init: pytorch` keeps PyTorch's default init instead.

Options beyond the paper: `width` multiplies every channel and hidden-unit count (rounded, at
least 1); `batchnorm` puts BatchNorm after each convolution (then the convolutions have no bias).

Layer order: `features` (convolutions) then `classifier` (the Linear layers), so the last
Linear registered is the output layer, as the pruning methods expect.
"""

from __future__ import annotations

import math
from typing import Literal

import torch
from pydantic import BaseModel, Field

from compress.vocab import OPTIONS
from torch import nn

from compress.errors import UserError
from compress.registry import register_model

IMAGE_EXAMPLE = {"example_shape": [3, 32, 32]}

CONV_PLANS = {2: [64, 64, "M"], 4: [64, 64, "M", 128, 128, "M"],
              6: [64, 64, "M", 128, 128, "M", 256, 256, "M"]}
FC_WIDTHS = [256, 256]


def scaled(units: int, width: float) -> int:
    """units * width, rounded half up, at least 1."""
    return max(1, math.floor(units * width + 0.5))


def require_image(model_name: str, in_shape: tuple[int, ...]) -> tuple[int, int, int]:
    """The (C, H, W) of an image input, or a UserError naming the model and the shape given."""
    if len(in_shape) != 3 or min(in_shape) < 1:
        raise UserError(f"{model_name} needs image input (C, H, W); dataset gives {tuple(in_shape)}")
    c, h, w = (int(v) for v in in_shape)
    return c, h, w


def glorot_init(model: nn.Module) -> None:
    """Gaussian Glorot (xavier normal) weights and zero biases for every Conv and Linear layer."""
    for mod in model.modules():
        if isinstance(mod, (nn.Linear, nn.Conv2d)):
            nn.init.xavier_normal_(mod.weight)
            if mod.bias is not None:
                nn.init.zeros_(mod.bias)


class ConvParams(BaseModel):
    model_config = OPTIONS
    width: float = Field(1.0, gt=0, description="multiplies every channel / hidden-unit count")
    batchnorm: bool = Field(False, description="BatchNorm after each convolution (not in the paper)")
    init: Literal["glorot", "pytorch"] = Field(
        "glorot", description="glorot: Gaussian Glorot weights, zero biases (the paper); "
                              "pytorch: PyTorch's default init")


class ConvNet(nn.Module):
    """features (conv 3x3 [+BN] + ReLU, 2x2 max-pool after each pair) -> flatten -> classifier."""

    def __init__(self, in_shape: tuple[int, int, int], plan: list, fc: list[int],
                 out_features: int, batchnorm: bool = False):
        super().__init__()
        c, h, w = in_shape
        layers: list[nn.Module] = []
        for item in plan:
            if item == "M":
                layers.append(nn.MaxPool2d(2))
                h, w = h // 2, w // 2
            else:
                layers.append(nn.Conv2d(c, item, 3, padding=1, bias=not batchnorm))
                if batchnorm:
                    layers.append(nn.BatchNorm2d(item))
                layers.append(nn.ReLU(inplace=True))
                c = item
        self.features = nn.Sequential(*layers)
        widths = [c * h * w, *fc, out_features]
        head: list[nn.Module] = []
        for a, b in zip(widths[:-1], widths[1:]):
            head += [nn.Linear(a, b), nn.ReLU(inplace=True)]
        self.classifier = nn.Sequential(*head[:-1])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x).flatten(1))


def build_convnet(depth: int, p: ConvParams, in_shape: tuple[int, ...], out_features: int) -> ConvNet:
    name = f"conv{depth}"
    c, h, w = require_image(name, in_shape)
    pools = CONV_PLANS[depth].count("M")
    if min(h, w) < 2 ** pools:
        raise UserError(f"{name} halves the image {pools} times and needs at least "
                        f"{2 ** pools}x{2 ** pools} pixels; dataset gives {tuple(in_shape)}")
    plan = [v if v == "M" else scaled(v, p.width) for v in CONV_PLANS[depth]]
    fc = [scaled(v, p.width) for v in FC_WIDTHS]
    model = ConvNet((c, h, w), plan, fc, out_features, batchnorm=p.batchnorm)
    if p.init == "glorot":
        glorot_init(model)
    return model


def _register(depth: int) -> None:
    convs = " ".join("pool" if v == "M" else str(v) for v in CONV_PLANS[depth])
    summary = (f"Conv-{depth} of the lottery-ticket paper (VGG-like): conv 3x3 {convs}, "
               "FC 256-256 (options: width, batchnorm, init)")

    def build(p: ConvParams, in_shape: tuple[int, ...], out_features: int) -> ConvNet:
        return build_convnet(depth, p, in_shape, out_features)

    build.__name__ = f"build_conv{depth}"
    register_model(f"conv{depth}", params=ConvParams, summary=summary,
                   defaults=dict(IMAGE_EXAMPLE))(build)


for _depth in CONV_PLANS:
    _register(_depth)
