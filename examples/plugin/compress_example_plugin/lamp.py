"""LAMP (Lee et al., ICLR 2021): one-shot global pruning by layer-adaptive magnitude scores.

A weight's score is w^2 divided by the sum of w^2 over the weights of its layer that are at
least as large; one global threshold on these scores picks each layer's density, then the
masked network is fine-tuned. The whole method in one class: compress does the rest.
"""

import torch
from pydantic import Field

from compress.core import scoring
from compress.core.masking import apply_masks, prunable_parameters
from compress.core.schedules import DurationStr
from compress.methods.base import DensityTarget, Method, PruneResult, train_masked
from compress.methods.presets import TINY_MLP, tiny
from compress.registry import register_method


class LampParams(DensityTarget):
    finetune: DurationStr = Field("5ep", description="training after pruning ('0ep': none)")


def lamp_scores(w: torch.Tensor) -> torch.Tensor:
    sq = w.detach().flatten().double() ** 2
    order = sq.argsort()
    tail = sq[order].flip(0).cumsum(0).flip(0)  # sum of squares of the weights >= each one
    scores = torch.empty_like(sq)
    scores[order] = sq[order] / tail.clamp_min(1e-300)
    return scores.view_as(w)


@register_method
class Lamp(Method):
    name = "lamp"
    summary = "LAMP: global one-shot pruning by layer-adaptive magnitude scores, then fine-tune"
    Params = LampParams
    test_settings = tiny(TINY_MLP, density=0.3, finetune="1ep")

    def run(self, p: LampParams, ctx) -> PruneResult:
        scores = {n: lamp_scores(w) for n, w in prunable_parameters(ctx.model).items()}
        masks = scoring.select(scores, p.density, "global", current=ctx.masks)
        apply_masks(ctx.model, masks)
        return PruneResult(masks, train_masked(ctx, masks, p.finetune, self.name),
                           {"layer_density": masks.layer_density()})
