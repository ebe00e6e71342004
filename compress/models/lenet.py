"""LeNet-300-100: the lottery-ticket paper's fully connected MNIST net.

It is the project's MLP (compress.models.mlp.MLP) with hidden widths [300, 100], so the MLP-only
paths (structural shrink, CPNA) apply to it unchanged. Frankle & Carbin (2019) initialise with
Gaussian Glorot (`init: glorot`, biases zero as in their TensorFlow reference code);
`init: pytorch` keeps PyTorch's default Linear init (what model `mlp` uses).
"""

from __future__ import annotations

import math
from typing import Literal

from pydantic import BaseModel, Field

from compress.vocab import OPTIONS

from compress.errors import UserError
from compress.models.convnets import glorot_init
from compress.models.mlp import MLP
from compress.registry import register_model


class LeNetParams(BaseModel):
    model_config = OPTIONS
    hidden: list[int] = Field(default=[300, 100], description="hidden layer widths")
    init: Literal["glorot", "pytorch"] = Field(
        "glorot", description="glorot: Gaussian Glorot weights, zero biases (the paper); "
                              "pytorch: PyTorch's default init")


@register_model("lenet300", params=LeNetParams,
                summary="LeNet-300-100 (lottery-ticket paper): the MLP with hidden [300, 100], "
                        "Glorot init",
                defaults={"example_shape": [1, 28, 28]})
def build_lenet300(p: LeNetParams, in_shape: tuple[int, ...], out_features: int) -> MLP:
    if not p.hidden or any(h < 1 for h in p.hidden):
        raise UserError(f"model.hidden must be positive widths, got {p.hidden}")
    model = MLP(math.prod(in_shape), p.hidden, out_features)
    if p.init == "glorot":
        glorot_init(model)
    return model
