"""Pruning at initialisation: `snip`, `grasp` and `synflow` (one-shot masks before training).

Each method loads the DENSE INITIALISATION (ctx.init) into the model, scores its Linear/Conv
weights (scores.py beside this file), keeps the target density by score (global by default, as
in the papers; exact counts), then trains the masked init for `duration` (default
train.duration) with the mask enforced. The pretrained dense weights are NOT used: the dense
training only supplies the lineage (data, model, init, config) of the prune stage.

- snip: |theta * dL/dtheta| on `batches` training batches (SNIP uses one).
- grasp: S = -theta * Hg (temperature-scaled logits); the LOWEST scores are kept, i.e. the
  weights whose removal would reduce the gradient norm the most (see init_scores).
- synflow: data-free |theta * dR/dtheta| on the absolute-valued network with an all-ones input,
  over `rounds` rounds of exponentially decreasing density (round k keeps density^(k/rounds)).

Weights pruned in the starting masks (a stage that was already pruned) stay pruned: density is
relative to each layer's full size. `keep_dense` layers are neither scored against nor pruned
(as in imp/gmp they are left out of the mask set, unless they were already sparse).
"""

from __future__ import annotations

from typing import Callable, Literal

import torch
from pydantic import Field
from torch import nn

from compress.core import scoring
from compress.core.loop import fit
from compress.core.masking import MaskEnforcer, apply_masks, prunable_parameters
from compress.core.masks import MaskSet
from compress.core.metrics import loss_fn
from compress.core.schedules import DurationStr, steps_per_epoch
from compress.errors import UserError
from compress.methods.base import (DensityTarget, Method, PruneContext, PruneResult,
                                   check_layer_names)
from compress.methods.pai import scores as init_scores
from compress.methods.presets import LENET_MNIST5K, TINY_MLP, tiny
from compress.registry import register_method

# scores(model with the masked init loaded, starting masks of the competing layers) ->
# {name: score}; HIGHER = KEPT (-inf = already removed).
ScoreFn = Callable[[nn.Module, MaskSet], scoring.Scores]


class PAIParams(DensityTarget):
    """`density` / `sparsity` is the target over the pruned layers (default density 0.1)."""

    scope: Literal["global", "layerwise"] = Field(
        "global", description="one threshold over all layers (the papers) or per layer")
    keep_dense: list[str] = Field(default_factory=list, description="layers left unpruned")
    duration: DurationStr | None = Field(
        None, description="training of the masked init (default: train.duration)")

    def default_density(self) -> float:
        return 0.1


class SNIPParams(PAIParams):
    batches: int = Field(1, ge=1, description="training batches (train.batch_size) for the score")


class GraSPParams(PAIParams):
    batches: int = Field(2, ge=1, description="training batches (train.batch_size) for g and Hg")
    temperature: float = Field(200.0, gt=0, description="logits are divided by this (paper: 200)")


class SynFlowParams(PAIParams):
    rounds: int = Field(100, ge=1, description="scoring rounds of exponentially decreasing density")


def check(p: PAIParams, ctx: PruneContext) -> list[str]:
    """Refuse what cannot run before anything does; returns the names of the layers to prune."""
    params = prunable_parameters(ctx.model)
    if not params:
        raise UserError("pruning at init needs Linear or Conv layers; this model has none")
    check_layer_names(p.keep_dense, params)
    dense = {n.removesuffix(".weight") + ".weight" for n in p.keep_dense}
    names = [n for n in params if n not in dense]
    if not names:
        raise UserError("method.keep_dense lists every prunable layer: nothing left to prune")
    if ctx.init is None:
        raise UserError("pruning at init needs the dense initialisation (init.safetensors) of "
                        "the source stage, and it has none")
    batches = getattr(p, "batches", None)
    if batches is not None:
        available = steps_per_epoch(len(ctx.data.train), ctx.train.batch_size)
        if batches > available:
            raise UserError(f"method.batches={batches} but the training split has only "
                            f"{available} batches of {ctx.train.batch_size}")
    if isinstance(p, SynFlowParams):
        try:
            init_scores.check_synflow_model(ctx.model)
        except init_scores.ScoreError as e:
            raise UserError(f"synflow: {e}") from None
    return names


def score_batches(ctx: PruneContext, n: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """The first n batches of a seeded shuffle of the training split."""
    split, size = ctx.data.train, ctx.train.batch_size
    order = torch.randperm(len(split), generator=torch.Generator().manual_seed(ctx.seed))
    return list(split.batches(order[k * size:(k + 1) * size] for k in range(n)))


def prune_at_init(p: PAIParams, ctx: PruneContext, scores: ScoreFn, label: str) -> PruneResult:
    """Load the init, score, keep the target density (never regrowing), train the masked init."""
    names = check(p, ctx)
    ctx.model.load_state_dict(ctx.init)
    apply_masks(ctx.model, ctx.masks)
    model_params = prunable_parameters(ctx.model)
    current = MaskSet({n: ctx.masks[n] if n in ctx.masks
                       else torch.ones_like(model_params[n], dtype=torch.bool) for n in names})
    with torch.random.fork_rng(devices=[]):  # dropout during scoring: seeded, no side effects
        torch.manual_seed(ctx.seed)
        try:
            raw = scores(ctx.model, current)
        except init_scores.ScoreError as e:
            raise UserError(f"{label}: {e}") from None
    s = {n: raw[n] for n in names}
    if any(bool(torch.isnan(t).any() | (t == float("inf")).any()) for t in s.values()):
        raise UserError(f"{label}: the scores are not finite (overflow or NaN in the model's "
                        "output at init); try another method or a smaller model")
    masks = scoring.select(s, p.density, p.scope, current=current)
    # keep_dense layers that were already sparse keep their mask (pruning never regrows)
    masks = MaskSet({**masks, **{n: m for n, m in ctx.masks.items()
                                 if n not in masks and n in model_params and not bool(m.all())}})
    history = fit(ctx.model, ctx.data, ctx.train, seed=ctx.seed, masks=MaskEnforcer(masks),
                  duration=p.duration, progress=label if ctx.progress else None)
    info = {"scope": p.scope, "scores": label, "start": "dense initialisation",
            "duration": p.duration or ctx.train.duration}
    return PruneResult(masks, history, info)


class PruneAtInit(Method):
    """What the three share: the embedded default, the checks, load-score-select-train."""

    defaults = LENET_MNIST5K

    def check(self, p: PAIParams, ctx: PruneContext) -> None:
        check(p, ctx)

    def scores(self, p: PAIParams, ctx: PruneContext, model: nn.Module,
               current: MaskSet) -> scoring.Scores:
        raise NotImplementedError

    def run(self, p: PAIParams, ctx: PruneContext) -> PruneResult:
        return prune_at_init(p, ctx, lambda model, current: self.scores(p, ctx, model, current),
                             self.name)


@register_method
class SNIP(PruneAtInit):
    name = "snip"
    summary = "SNIP: prune at init by |w * dL/dw| on a training batch, then train"
    Params = SNIPParams
    test_settings = tiny(TINY_MLP, density=0.3)

    def scores(self, p: SNIPParams, ctx, model, current) -> scoring.Scores:
        return init_scores.snip_scores(model, score_batches(ctx, p.batches), loss_fn)


@register_method
class GraSP(PruneAtInit):
    name = "grasp"
    summary = "GraSP: prune at init keeping gradient flow (-w * Hg), then train"
    Params = GraSPParams
    test_settings = tiny(TINY_MLP, density=0.3)

    def scores(self, p: GraSPParams, ctx, model, current) -> scoring.Scores:
        # GraSP removes the HIGHEST S = -w * Hg (their removal keeps or raises ||g||^2) and keeps
        # the lowest; select keeps the highest values, so it is given -S = w * Hg.
        s = init_scores.grasp_scores(model, score_batches(ctx, p.batches), loss_fn, p.temperature)
        return {n: -v for n, v in s.items()}


@register_method
class SynFlow(PruneAtInit):
    name = "synflow"
    summary = "SynFlow: data-free iterative pruning at init by synaptic flow, then train"
    Params = SynFlowParams
    test_settings = tiny(TINY_MLP, density=0.3, rounds=10)

    def scores(self, p: SynFlowParams, ctx, model, current) -> scoring.Scores:
        in_shape = tuple(ctx.data.in_shape)
        return init_scores.synflow_iterative(model, in_shape, p.density, p.rounds, p.scope,
                                             names=list(current), current=current)
