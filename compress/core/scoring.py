"""Pure importance scores and score -> mask selection with exact kept counts."""

from __future__ import annotations

import math
from typing import Literal, Mapping

import torch

from compress.core.masking import keep_top
from compress.core.masks import MaskSet

Scores = dict[str, torch.Tensor]


def magnitude(params: Mapping[str, torch.Tensor]) -> Scores:
    return {n: p.detach().abs().float() for n, p in params.items()}


def uniform_random(params: Mapping[str, torch.Tensor], seed: int) -> Scores:
    g = torch.Generator().manual_seed(seed)
    return {n: torch.rand(p.shape, generator=g) for n, p in params.items()}


def _exclude_pruned(scores: Scores, current: MaskSet | None) -> Scores:
    if current is None:
        return scores
    return {n: s.masked_fill(~current[n].to(s.device), float("-inf")) for n, s in scores.items()}


def select(scores: Scores, density: float, scope: Literal["layerwise", "global"] = "layerwise",
           current: MaskSet | None = None) -> MaskSet:
    """Keep exactly round(density * size) entries by score (per layer, or over all layers).

    Pruned entries of `current` never come back; density is relative to the full layer size.
    """
    scores = _exclude_pruned(scores, current)
    if scope == "layerwise":
        return MaskSet({n: keep_top(s, min(_count(density, s.numel()), _alive(s)))
                        for n, s in scores.items()})
    names = list(scores)
    flat = torch.cat([scores[n].flatten() for n in names])
    keep = keep_top(flat, min(_count(density, flat.numel()), _alive(flat)))
    out, start = {}, 0
    for n in names:
        size = scores[n].numel()
        out[n] = keep[start:start + size].view_as(scores[n])
        start += size
    return MaskSet(out)


def select_counts(scores: Scores, counts: dict[str, int], current: MaskSet | None = None) -> MaskSet:
    """Keep exactly counts[name] entries of each layer by score (never regrowing `current`)."""
    scores = _exclude_pruned(scores, current)
    return MaskSet({n: keep_top(s, min(counts[n], _alive(s))) for n, s in scores.items()})


def random_like(masks: MaskSet, seed: int, scope: Literal["layerwise", "global"] = "layerwise") -> MaskSet:
    """A random mask with the same kept count per layer (layerwise) or in total (global)."""
    scores = uniform_random(masks, seed)
    if scope == "layerwise":
        return select_counts(scores, masks.kept())
    total = sum(m.numel() for m in masks.values())
    return select(scores, sum(masks.kept().values()) / total, "global")


def _count(density: float, size: int) -> int:
    return int(math.floor(density * size + 0.5))


def _alive(s: torch.Tensor) -> int:
    return int(torch.isfinite(s).sum())


# ------------------------------------------------------------------------- channel scores
def _producer_slices(model: torch.nn.Module, group, kinds: tuple[type, ...], leaves: set[str]):
    """(per-position view [positions, -1] of each producing parameter of `group` whose module
    is one of `kinds` and whose leaf name is in `leaves`, its position -> unit map)."""
    modules = dict(model.named_modules())
    params = dict(model.named_parameters())
    for m in group.members:
        mod_name, _, leaf = m.param.rpartition(".")
        if m.produces and leaf in leaves and isinstance(modules.get(mod_name), kinds):
            w = params[m.param].detach()
            yield w.movedim(m.dim, 0).reshape(w.shape[m.dim], -1), m.units


def _per_unit(group, pairs, reduce: str) -> torch.Tensor | None:
    score, found = torch.zeros(group.size, dtype=torch.float64), False
    for per_position, units in pairs:
        own = units >= 0
        score.scatter_reduce_(0, units[own], per_position[own].double().cpu(), reduce=reduce)
        found = True
    return score if found else None


def filter_l1(model: torch.nn.Module, group) -> torch.Tensor:
    """Li et al.'s filter norm per unit of a channel group: the sum of |w| over the filter
    (conv) or row (linear) producing it, summed over coupled layers (a residual sum's convs);
    for an attention head, over its query, key and value rows."""
    from compress.core.masking import PRUNABLE_TYPES
    from compress.core.attention import PrunedAttention
    kinds = PRUNABLE_TYPES + (torch.nn.MultiheadAttention, PrunedAttention)
    pairs = ((s.abs().sum(1), u) for s, u in
             _producer_slices(model, group, kinds, {"weight", "in_proj_weight"}))
    score = _per_unit(group, pairs, "sum")
    return score if score is not None else torch.zeros(group.size, dtype=torch.float64)


def bn_scale(model: torch.nn.Module, group) -> torch.Tensor | None:
    """Network slimming's channel score: |gamma| of the BatchNorm scaling the channel (the
    largest over coupled BatchNorms: a channel goes only if every scale on it is small);
    None when no affine BatchNorm scales the group."""
    from torch.nn.modules.batchnorm import _BatchNorm
    pairs = ((s.abs().amax(1), u) for s, u in _producer_slices(model, group, (_BatchNorm,),
                                                                {"weight"}))
    return _per_unit(group, pairs, "amax")
