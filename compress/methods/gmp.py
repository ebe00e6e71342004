"""Gradual magnitude pruning (Zhu & Gupta 2017): a cubic sparsity schedule during training.

Every dt steps from t0 to t0 + n*dt, each layer's sparsity is set to
s_t = s_f + (s_i - s_f) * (1 - (t - t0) / (n dt))^3 by |w|; training continues after the last
update, which lands exactly on s_f (the schedule must end before training does).
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from compress.core import scoring
from compress.core.loop import BaseHook, fit
from compress.core.masking import MaskEnforcer, prunable_parameters
from compress.core.masks import MaskSet
from compress.core.schedules import DurationStr, gmp_sparsity, parse_duration, steps_per_epoch
from compress.errors import UserError
from compress.methods.base import (DensityTarget, Method, PruneContext, PruneResult,
                                   check_layer_names)
from compress.methods.presets import LENET_MNIST5K, TINY_MLP, tiny
from compress.registry import register_method


class GMPParams(DensityTarget):
    """`density` / `sparsity` is the FINAL target (s_f = 1 - density)."""

    initial_sparsity: float = Field(0.0, ge=0, lt=1, description="s_i")
    start: DurationStr = Field("0it", description="t0: first pruning step")
    steps: int = Field(10, ge=1, description="n: number of pruning updates after t0")
    interval: DurationStr = Field("100it", description="dt: steps between updates")
    duration: DurationStr | None = Field(None, description="training length (default: train.duration)")
    scope: Literal["layerwise", "global"] = "layerwise"
    keep_dense: list[str] = Field(default_factory=list)

    @model_validator(mode="after")
    def _order(self):
        if self.initial_sparsity >= 1 - self.density:
            raise ValueError(f"initial_sparsity {self.initial_sparsity} must be below the final "
                             f"sparsity {1 - self.density:.4g}")
        return self


class GMPHook(BaseHook):
    def __init__(self, p: GMPParams, enforcer: MaskEnforcer, t0: int, dt: int):
        self.p, self.enforcer, self.t0, self.dt = p, enforcer, t0, dt
        self.updates: list[tuple[int, float]] = []

    def on_fit_start(self, state) -> None:
        self.after_step(state)  # t0 = 0 prunes before the first step

    def after_step(self, state) -> None:
        s = gmp_sparsity(state.step, self.p.initial_sparsity, 1 - self.p.density,
                         self.t0, self.p.steps, self.dt)
        if s is None:
            return
        params = {n: w for n, w in prunable_parameters(state.model).items()
                  if n in self.enforcer.masks}
        masks = scoring.select(scoring.magnitude(params), 1 - s, self.p.scope, self.enforcer.masks)
        self.enforcer.update(masks, state.optimizer)
        self.updates.append((state.step, s))


@register_method
class GMP(Method):
    name = "gmp"
    summary = "gradual magnitude pruning with Zhu & Gupta's cubic schedule"
    Params = GMPParams
    defaults = LENET_MNIST5K
    test_settings = tiny(TINY_MLP, density=0.3, steps=3, interval="2it", duration="10it")

    def check(self, p: GMPParams, ctx: PruneContext) -> None:
        schedule(p, ctx)

    def run(self, p: GMPParams, ctx: PruneContext) -> PruneResult:
        t0, dt, duration = schedule(p, ctx)
        dense = {n.removesuffix(".weight") + ".weight" for n in p.keep_dense}
        enforcer = MaskEnforcer(MaskSet({n: m for n, m in ctx.masks.items() if n not in dense}))
        hook = GMPHook(p, enforcer, t0, dt)
        history = fit(ctx.model, ctx.data, ctx.train, seed=ctx.seed, hooks=[hook],
                      masks=enforcer, duration=duration,
                      progress=self.name if ctx.progress else None)
        return PruneResult(enforcer.masks, history, {"updates": hook.updates})


def schedule(p: GMPParams, ctx: PruneContext) -> tuple[int, int, str]:
    """(t0, dt, duration) in steps; refuses unknown layers and schedules longer than training."""
    check_layer_names(p.keep_dense, prunable_parameters(ctx.model))
    spe = steps_per_epoch(len(ctx.data.train), ctx.train.batch_size)
    t0, dt = parse_duration(p.start).steps(spe), parse_duration(p.interval).steps(spe)
    duration = p.duration or ctx.train.duration
    total = parse_duration(duration).steps(spe)
    if dt < 1:
        raise UserError("method.interval must be at least one step")
    if t0 + p.steps * dt > total:
        raise UserError(f"the GMP schedule ends at step {t0 + p.steps * dt}, after training ends "
                        f"({duration} = {total} steps); shorten start/steps/interval or train longer")
    return t0, dt, duration
