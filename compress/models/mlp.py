"""Fully connected ReLU network: the CPNA paper's wide MLP and friends."""

from __future__ import annotations

import math

import torch
from pydantic import BaseModel, Field

from compress.vocab import OPTIONS
from torch import nn

from compress.registry import register_model


class MLPParams(BaseModel):
    model_config = OPTIONS
    hidden: list[int] = Field(default=[1024], description="hidden layer widths")
    bias: bool = True


class MLP(nn.Module):
    """x -> [Linear -> ReLU] * len(hidden) -> Linear. Layers live in `self.layers`."""

    # The structural shrink's contract (compress.core.shrink): a flattened input through
    # `self.layers` with ReLU between them. Core code reads this, never imports the class.
    shrink_kind = "mlp"

    def __init__(self, in_features: int, hidden: list[int], out_features: int, bias: bool = True):
        super().__init__()
        widths = [in_features, *hidden, out_features]
        self.layers = nn.ModuleList(
            nn.Linear(a, b, bias=bias) for a, b in zip(widths[:-1], widths[1:])
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.flatten(1)
        for layer in self.layers[:-1]:
            x = torch.relu(layer(x))
        return self.layers[-1](x)


@register_model("mlp", params=MLPParams, summary="fully connected ReLU net (hidden: [widths])")
def build_mlp(p: MLPParams, in_shape: tuple[int, ...], out_features: int) -> MLP:
    if any(h < 1 for h in p.hidden):
        from compress.errors import UserError
        raise UserError(f"model.hidden must be positive widths, got {p.hidden}")
    return MLP(math.prod(in_shape), p.hidden, out_features, bias=p.bias)
