"""One-shot pruning by a score: `magnitude` (|w|) and `random` (the control), then fine-tune."""

from __future__ import annotations

from typing import Callable, Literal

from pydantic import Field

from compress.core import scoring
from compress.core.schedules import DurationStr
from compress.core.masking import apply_masks, prunable_parameters
from compress.methods.base import DensityTarget, PruneContext, PruneResult, train_masked
from compress.registry import register_method


class OneShotParams(DensityTarget):
    scope: Literal["layerwise", "global"] = "layerwise"
    finetune: DurationStr = Field("30ep", description="training after pruning ('0ep' for none)")


def prune_once(p: OneShotParams, ctx: PruneContext,
               score_fn: Callable[[dict], scoring.Scores], label: str) -> PruneResult:
    """Mask the lowest scores to the target density, then fine-tune with the mask enforced."""
    params = prunable_parameters(ctx.model)
    masks = scoring.select(score_fn(params), p.density, p.scope, current=ctx.masks)
    apply_masks(ctx.model, masks)
    return PruneResult(masks, train_masked(ctx, masks, p.finetune, label), {"scope": p.scope})


@register_method("magnitude", params=OneShotParams,
                 summary="one-shot magnitude pruning (layer-wise or global), then fine-tune")
def magnitude(p: OneShotParams, ctx: PruneContext) -> PruneResult:
    return prune_once(p, ctx, scoring.magnitude, "magnitude")


@register_method("random", params=OneShotParams,
                 summary="random pruning at the same per-layer density (the control), then fine-tune")
def random(p: OneShotParams, ctx: PruneContext) -> PruneResult:
    return prune_once(p, ctx, lambda params: scoring.uniform_random(params, ctx.seed), "random")
