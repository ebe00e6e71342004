"""Multiply-accumulate counts per prunable layer, dense and under unstructured masks."""

from __future__ import annotations

from typing import Mapping

import torch
from torch import nn

from compress.core.hooks import observe
from compress.core.masking import PRUNABLE_TYPES


def layer_macs(model: nn.Module, example: torch.Tensor) -> dict[str, int]:
    """MACs per sample of every Linear/Conv weight, keyed by parameter name."""
    out: dict[str, int] = {}
    hooks = []
    for name, mod in model.named_modules():
        if isinstance(mod, PRUNABLE_TYPES):
            key = f"{name}.weight" if name else "weight"

            def hook(m, inputs, output, key=key):
                per_out = m.weight[0].numel()  # in_features, or in_ch/groups * kernel
                out[key] = out.get(key, 0) + int(output[0].numel()) * per_out
            hooks.append((mod, hook))
    observe(model, example[:1], hooks)
    return out


def sparse_macs(macs: Mapping[str, int], masks: Mapping[str, torch.Tensor] | None) -> float:
    """MACs that touch kept weights: each layer's dense count times its density."""
    if not masks:
        return float(sum(macs.values()))
    return float(sum(m * (float(masks[n].float().mean()) if n in masks else 1.0)
                     for n, m in macs.items()))
