"""CIFAR-style residual nets: ResNet-20 (He et al. 2016) and ResNet-18 with a width factor.

Both use basic blocks (conv 3x3 - BN - ReLU - conv 3x3 - BN, plus the shortcut, then ReLU), a
3x3 stem convolution with no max-pool, global average pooling and one Linear output layer
(registered last, so the pruning methods see it as the output layer).

- `resnet20`: He et al. (2016), Sec. 4.2: three stages of 3 blocks with 16/32/64 channels, the
  2nd and 3rd stage starting with stride 2. Where the shape changes the shortcut is a 1x1
  convolution + BatchNorm projection (option B of the paper, as in open_lth's cifar_resnet),
  not the parameter-free zero-padding of option A.
- `resnet18c`: the CIFAR variant of ResNet-18 used by IteRand (Chijiwa et al. 2021) for parameter
  efficiency: four stages of 2 blocks with 64/128/256/512 channels times the width factor rho,
  strides 1/2/2/2, 1x1 conv + BN projection shortcuts.

`width` multiplies every channel count (rounded, at least 1). `init: kaiming` (default) follows
He et al.: He-normal convolutions (fan_out, as torchvision's ResNets), BatchNorm weight 1 and
bias 0, PyTorch's default for the Linear layer; `init: pytorch` keeps PyTorch's defaults.
"""

from __future__ import annotations

from typing import Literal

import torch
from pydantic import BaseModel, Field

from compress.vocab import OPTIONS
from torch import nn

from compress.models.convnets import IMAGE_EXAMPLE, require_image, scaled
from compress.registry import register_model


class ResNetParams(BaseModel):
    model_config = OPTIONS
    width: float = Field(1.0, gt=0, description="multiplies every channel count (rho)")
    init: Literal["kaiming", "pytorch"] = Field(
        "kaiming", description="kaiming: He-normal convs, BN 1/0 (the paper); pytorch: defaults")


class BasicBlock(nn.Module):
    def __init__(self, c_in: int, c_out: int, stride: int):
        super().__init__()
        self.conv1 = nn.Conv2d(c_in, c_out, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(c_out)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, stride=1, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(c_out)
        if stride != 1 or c_in != c_out:
            self.shortcut = nn.Sequential(nn.Conv2d(c_in, c_out, 1, stride=stride, bias=False),
                                          nn.BatchNorm2d(c_out))
        else:
            self.shortcut = nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = torch.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return torch.relu(out + self.shortcut(x))


class CifarResNet(nn.Module):
    """stem conv 3x3 - BN - ReLU -> stages of BasicBlocks -> global avg pool -> Linear."""

    def __init__(self, in_channels: int, plan: list[tuple[int, int, int]], out_features: int):
        super().__init__()
        c = plan[0][0]
        self.conv = nn.Conv2d(in_channels, c, 3, stride=1, padding=1, bias=False)
        self.bn = nn.BatchNorm2d(c)
        blocks = []
        for channels, n_blocks, stride in plan:
            for i in range(n_blocks):
                blocks.append(BasicBlock(c, channels, stride if i == 0 else 1))
                c = channels
        self.blocks = nn.Sequential(*blocks)
        self.fc = nn.Linear(c, out_features)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.blocks(torch.relu(self.bn(self.conv(x))))
        return self.fc(out.mean(dim=(2, 3)))


def kaiming_init(model: nn.Module) -> None:
    for mod in model.modules():
        if isinstance(mod, nn.Conv2d):
            nn.init.kaiming_normal_(mod.weight, mode="fan_out", nonlinearity="relu")
        elif isinstance(mod, nn.BatchNorm2d):
            nn.init.ones_(mod.weight)
            nn.init.zeros_(mod.bias)


def _build(name: str, plan: list[tuple[int, int, int]], p: ResNetParams,
           in_shape: tuple[int, ...], out_features: int) -> CifarResNet:
    c, _, _ = require_image(name, in_shape)
    plan = [(scaled(ch, p.width), n, s) for ch, n, s in plan]
    model = CifarResNet(c, plan, out_features)
    if p.init == "kaiming":
        kaiming_init(model)
    return model


@register_model("resnet20", params=ResNetParams,
                summary="CIFAR ResNet-20 (He et al. 2016): 3x3 blocks, 16/32/64 channels, "
                        "1x1-conv projection shortcuts (options: width, init)",
                defaults=dict(IMAGE_EXAMPLE))
def build_resnet20(p: ResNetParams, in_shape: tuple[int, ...], out_features: int) -> CifarResNet:
    return _build("resnet20", [(16, 3, 1), (32, 3, 2), (64, 3, 2)], p, in_shape, out_features)


@register_model("resnet18c", params=ResNetParams,
                summary="CIFAR-style ResNet-18 (3x3 stem, no max-pool): 4x2 blocks, "
                        "64/128/256/512 x width (IteRand's model)",
                defaults=dict(IMAGE_EXAMPLE))
def build_resnet18c(p: ResNetParams, in_shape: tuple[int, ...], out_features: int) -> CifarResNet:
    return _build("resnet18c", [(64, 2, 1), (128, 2, 2), (256, 2, 2), (512, 2, 2)],
                  p, in_shape, out_features)
