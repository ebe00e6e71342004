"""Lottery tickets: iterative magnitude pruning with rewinding (Frankle & Carbin), and one-shot.

Round r: remove a fraction of each layer's surviving weights by |w| (or one global
threshold), reset the survivors to the rewind point, retrain. Masks only ever shrink. Each
round is reported through ctx.on_round (a nested MLflow run holding its mask), and optional
controls (random reinit, random prune, Scratch-E/B) are trained on every round's mask.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from compress.core import scoring
from compress.core.loop import evaluate, fit
from compress.core.masking import MaskEnforcer, apply_masks, prunable_parameters
from compress.core.masks import MaskSet
from compress.core.schedules import DurationStr, per_round_fraction
from compress.methods import controls
from compress.methods.base import (DensityTarget, Method, MethodParams, PruneContext,
                                   PruneResult, check_layer_names)
from compress.methods.presets import LENET_MNIST5K, TINY_MLP, tiny
from compress.registry import register_method

Control = Literal["reinit", "random_prune", "scratch_e", "scratch_b"]


class RewindOptions(MethodParams):
    rewind: DurationStr = Field("0it", description="rewind point: '0it' (init), '500it', '2ep'")
    scope: Literal["layerwise", "global"] = "layerwise"
    keep_dense: list[str] = Field(default_factory=list, description="layers left unpruned")
    controls: list[Control] = Field(default_factory=list, description="trained on every mask")


class IMPParams(RewindOptions):
    rounds: int = Field(5, ge=1)
    fraction: float | None = Field(None, gt=0, lt=1,
                                   description="share of surviving fc weights removed per round (0.2)")
    conv_fraction: float | None = Field(None, gt=0, lt=1, description="conv layers (default: fraction)")
    output_fraction: float | None = Field(None, gt=0, lt=1,
                                          description="output layer (default: half of fraction)")
    density: float | None = Field(None, gt=0, lt=1,
                                  description="target density after `rounds` (instead of fraction)")

    @model_validator(mode="after")
    def _rate(self):
        if self.density is not None and self.fraction is not None:
            raise ValueError("give fraction (per round) or density (target after rounds), not both")
        if self.density is None and self.fraction is None:
            self.fraction = 0.2
        return self

    def layer_fraction(self, kind: str) -> float:
        """Per-round removal for a layer kind: 'conv', 'fc' or 'output'."""
        if self.density is not None:
            base = per_round_fraction(self.density, self.rounds)
            return {"conv": self.conv_fraction, "output": self.output_fraction}.get(kind) or base
        if kind == "conv":
            return self.conv_fraction or self.fraction
        if kind == "output":
            return self.output_fraction or self.fraction / 2
        return self.fraction


class LTHOneShotParams(DensityTarget, RewindOptions):
    pass


def layer_kinds(params: dict) -> dict[str, str]:
    names = list(params)
    return {n: "output" if n == names[-1] else ("conv" if params[n].dim() > 2 else "fc")
            for n in names}


def prune_round(model, masks: MaskSet, fractions: dict[str, float], scope: str,
                global_fraction: float) -> MaskSet:
    """Remove fractions[name] of each layer's survivors by |w| (global: one threshold)."""
    params = {n: p for n, p in prunable_parameters(model).items() if n in masks}
    scores = scoring.magnitude(params)
    kept = masks.kept()
    if scope == "global":
        total = sum(m.numel() for m in masks.values())
        keep = round((1 - global_fraction) * sum(kept.values()))
        return scoring.select(scores, keep / total, "global", masks)
    counts = {n: round((1 - fractions[n]) * kept[n]) for n in masks}
    return scoring.select_counts(scores, counts, masks)


def check(p: RewindOptions, ctx: PruneContext) -> None:
    """Refuse bad options before anything runs: unknown layer names, a late rewind point."""
    check_layer_names(p.keep_dense, prunable_parameters(ctx.model))
    controls.rewind_steps(p.rewind, ctx.data, ctx.dense_train)


def run_rounds(p: RewindOptions, ctx: PruneContext, fractions_for, global_fraction: float,
               rounds: int, label: str) -> PruneResult:
    check(p, ctx)
    params = prunable_parameters(ctx.model)
    dense = {n.removesuffix(".weight") + ".weight" for n in p.keep_dense}
    masks = MaskSet({n: m for n, m in ctx.masks.items() if n not in dense})
    fractions = fractions_for(layer_kinds(params))
    rewound = controls.rewind_state(ctx.build, ctx.init, p.rewind, ctx.data, ctx.dense_train,
                                    ctx.dense_seed)
    curve, history = [], []
    for r in range(1, rounds + 1):
        masks = prune_round(ctx.model, masks, fractions, p.scope, global_fraction)
        ctx.model.load_state_dict(rewound)
        history = fit(ctx.model, ctx.data, ctx.train, seed=ctx.seed, masks=MaskEnforcer(masks),
                      progress=f"{label} round {r}/{rounds}" if ctx.progress else None)
        row = {"round": r, "density": masks.density(), **_test(ctx.model, ctx.data, "ticket")}
        for mode in p.controls:
            row.update(_control(mode, p, ctx, masks, rewound))
        curve.append(row)
        if ctx.on_round is not None:
            ctx.on_round(r, masks, row, history)
    apply_masks(ctx.model, masks)
    return PruneResult(masks, history, {"curve": curve, "rewind": p.rewind, "scope": p.scope})


def _test(model, data, prefix: str) -> dict[str, float]:
    m = evaluate(model, data.test)
    return {f"{prefix}_test_{k}": v for k, v in m.items() if k != "loss"}


def _control(mode: str, p: RewindOptions, ctx: PruneContext, masks: MaskSet, rewound) -> dict:
    start = controls.prepare(mode, build=ctx.build, masks=masks, trained=None, rewound=rewound,
                             duration=ctx.train.duration, example=ctx.data.test.head(1),
                             seed=ctx.seed, scope=p.scope)
    fit(start.model, ctx.data, ctx.train, seed=ctx.seed, masks=MaskEnforcer(start.masks),
        duration=start.duration)
    return _test(start.model, ctx.data, mode)


@register_method
class IMP(Method):
    name = "imp"
    summary = "lottery tickets: iterative magnitude pruning with rewinding"
    Params = IMPParams
    defaults = LENET_MNIST5K
    test_settings = tiny(TINY_MLP, rounds=2, fraction=0.3)

    def check(self, p: IMPParams, ctx: PruneContext) -> None:
        check(p, ctx)

    def run(self, p: IMPParams, ctx: PruneContext) -> PruneResult:
        return run_rounds(p, ctx, lambda kinds: {n: p.layer_fraction(k) for n, k in kinds.items()},
                          p.layer_fraction("fc"), p.rounds, self.name)


@register_method
class OneShotTicket(Method):
    name = "oneshot"
    summary = "lottery ticket in one shot: prune to the target, rewind, retrain"
    Params = LTHOneShotParams
    defaults = LENET_MNIST5K
    test_settings = tiny(TINY_MLP, density=0.3)

    def check(self, p: LTHOneShotParams, ctx: PruneContext) -> None:
        check(p, ctx)

    def run(self, p: LTHOneShotParams, ctx: PruneContext) -> PruneResult:
        return run_rounds(p, ctx, lambda kinds: {n: 1 - p.density for n in kinds}, 1 - p.density,
                          1, self.name)
