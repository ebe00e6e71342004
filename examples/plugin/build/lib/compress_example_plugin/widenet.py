"""`widenet`: Linear - LayerNorm - ReLU - Linear (a model compress has no built-in of)."""

import math

from pydantic import BaseModel, ConfigDict, Field
from torch import nn

from compress.registry import register_model


class WideNetParams(BaseModel):
    model_config = ConfigDict(extra="forbid")
    width: int = Field(256, ge=1)


@register_model("widenet", params=WideNetParams, summary="Linear-LayerNorm-ReLU-Linear (width)")
def build_widenet(p: WideNetParams, in_shape: tuple[int, ...], out_features: int) -> nn.Module:
    return nn.Sequential(nn.Flatten(), nn.Linear(math.prod(in_shape), p.width),
                         nn.LayerNorm(p.width), nn.ReLU(), nn.Linear(p.width, out_features))
