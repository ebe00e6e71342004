"""One-shot pruning by a score: `magnitude` (|w|) and `random` (the control), then fine-tune."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from compress.core import scoring
from compress.core.masking import apply_masks, prunable_parameters
from compress.core.schedules import DurationStr
from compress.methods.base import DensityTarget, Method, PruneContext, PruneResult, train_masked
from compress.methods.presets import TINY_MLP, tiny
from compress.registry import register_method


class OneShotParams(DensityTarget):
    scope: Literal["layerwise", "global"] = "layerwise"
    finetune: DurationStr = Field("30ep", description="training after pruning ('0ep' for none)")


@register_method
class Magnitude(Method):
    """Mask the lowest |w| to the target density, then fine-tune with the mask enforced."""

    name = "magnitude"
    summary = "one-shot magnitude pruning (layer-wise or global), then fine-tune"
    Params = OneShotParams
    test_settings = tiny(TINY_MLP, density=0.3, finetune="1ep")

    def scores(self, params: dict, ctx: PruneContext) -> scoring.Scores:
        return scoring.magnitude(params)

    def run(self, p: OneShotParams, ctx: PruneContext) -> PruneResult:
        params = prunable_parameters(ctx.model)
        masks = scoring.select(self.scores(params, ctx), p.density, p.scope, current=ctx.masks)
        apply_masks(ctx.model, masks)
        return PruneResult(masks, train_masked(ctx, masks, p.finetune, self.name),
                           {"scope": p.scope})


@register_method
class Random(Magnitude):
    name = "random"
    summary = "random pruning at the same per-layer density (the control), then fine-tune"

    def scores(self, params: dict, ctx: PruneContext) -> scoring.Scores:
        return scoring.uniform_random(params, ctx.seed)
