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
    return {n: s.masked_fill(~current[n], float("-inf")) for n, s in scores.items()}


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
