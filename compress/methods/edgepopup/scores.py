"""Masks chosen by trainable scores (edge-popup): W_eff = W * topk(scores), straight-through.

The weights are frozen at random values drawn from seeds, so a network is fully described by
its seed(s) and masks: `draw_weights` regenerates them bit for bit.
"""

from __future__ import annotations

import math
from typing import Iterable, Literal

import torch
from torch import nn
from torch.nn.utils import parametrize

from compress.core.masking import keep_top, prunable_parameters
from compress.core.masks import MaskSet

WeightInit = Literal["kaiming_uniform", "kaiming_normal", "signed_constant"]


class _TopK(torch.autograd.Function):
    """Forward: 0/1 mask of the k largest scores. Backward: the gradient passes to every score."""

    @staticmethod
    def forward(ctx, scores: torch.Tensor, k: int) -> torch.Tensor:
        return keep_top(scores, k).to(scores.dtype)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        return grad, None


class ScoredMask(nn.Module):
    """Parametrization of a weight: frozen values times the top-`density` mask of its scores."""

    def __init__(self, shape: torch.Size, density: float, generator: torch.Generator):
        super().__init__()
        self.k = max(1, int(math.floor(density * math.prod(shape) + 0.5)))
        scores = torch.empty(shape)
        bound = 1 / math.sqrt(shape[1:].numel())  # kaiming_uniform(a=sqrt(5)), as edge-popup
        self.scores = nn.Parameter(scores.uniform_(-bound, bound, generator=generator))

    def forward(self, weight: torch.Tensor) -> torch.Tensor:
        return weight * _TopK.apply(self.scores, self.k)

    def mask(self) -> torch.Tensor:
        return keep_top(self.scores.detach(), self.k)


def _modules_by_weight(model: nn.Module) -> dict[str, nn.Module]:
    mods = dict(model.named_modules())
    return {n: mods[n.removesuffix(".weight")] for n in prunable_parameters(model)}


def fan_in(shape: torch.Size) -> int:
    return int(shape[1:].numel())


def draw(shape: torch.Size, init: WeightInit, generator: torch.Generator) -> torch.Tensor:
    """Random weights of one layer (gain sqrt(2), fan-in), reproducible from the generator."""
    std = math.sqrt(2.0 / fan_in(shape))
    if init == "kaiming_normal":
        return torch.randn(shape, generator=generator) * std
    if init == "kaiming_uniform":
        bound = std * math.sqrt(3.0)
        return torch.rand(shape, generator=generator) * (2 * bound) - bound
    return torch.where(torch.rand(shape, generator=generator) < 0.5, -std, std)


@torch.no_grad()
def draw_weights(model: nn.Module, names: Iterable[str], init: WeightInit, seed: int) -> dict:
    """Fresh random weights for `names`, drawn in that order from one seeded generator."""
    g = torch.Generator().manual_seed(seed)
    params = dict(model.named_parameters())
    return {n: draw(params[n].shape, init, g) for n in names}


@torch.no_grad()
def freeze_extras(model: nn.Module) -> None:
    """No biases and non-affine normalisation (edge-popup): zero/one them and freeze."""
    for mod in model.modules():
        if isinstance(mod, nn.modules.batchnorm._NormBase) and mod.affine:
            mod.weight.fill_(1.0)
            mod.bias.zero_()
        for p in mod.parameters(recurse=False):
            p.requires_grad_(False)
    for mod in model.modules():
        if getattr(mod, "bias", None) is not None and not isinstance(mod, nn.modules.batchnorm._NormBase):
            mod.bias.zero_()


def attach(model: nn.Module, densities: dict[str, float], seed: int) -> dict[str, ScoredMask]:
    """Replace each named weight by weight * topk(scores); returns the parametrizations."""
    g = torch.Generator().manual_seed(seed)
    mods = _modules_by_weight(model)
    out = {}
    for name, density in densities.items():
        mod = mods[name]
        pm = ScoredMask(mod.weight.shape, density, g)
        parametrize.register_parametrization(mod, "weight", pm)
        out[name] = pm
    return out


def original(model: nn.Module, name: str) -> torch.Tensor:
    """The frozen weight under a parametrization (what IteRand re-randomises)."""
    return _modules_by_weight_parametrized(model)[name].parametrizations.weight.original


def _modules_by_weight_parametrized(model: nn.Module) -> dict[str, nn.Module]:
    mods = dict(model.named_modules())
    out = {}
    for n, m in mods.items():
        if parametrize.is_parametrized(m, "weight"):
            out[f"{n}.weight"] = m
    return out


def detach(model: nn.Module, scored: dict[str, ScoredMask]) -> MaskSet:
    """Remove the parametrizations, leaving the frozen weights masked; returns the masks."""
    masks = MaskSet({n: pm.mask() for n, pm in scored.items()})
    mods = _modules_by_weight_parametrized(model)
    with torch.no_grad():
        for name in scored:
            parametrize.remove_parametrizations(mods[name], "weight", leave_parametrized=False)
    params = dict(model.named_parameters())
    with torch.no_grad():
        for name, m in masks.items():
            params[name].mul_(m)
    return masks
