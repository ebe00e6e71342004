"""CPNA / CPA: connection pruning with (node normalisation and) annealing.

"Finding Deep Local Optima Using Network Pruning". After dense pretraining, every epoch:
normalise each hidden unit's incoming row to unit norm (CPNA only; the function is unchanged
under ReLU), compute the annealed number of connections M_e each layer keeps (FSA schedule),
and keep the M_e highest-scoring connections; removed connections never return. Hidden->output
connections are annealed first, then input->hidden ones (or both at once). A hidden unit left
without outgoing connections is dead and loses its inputs too; an input feature left without
connections is dropped by the export.
"""

from __future__ import annotations

from typing import Literal

import torch
from pydantic import Field, model_validator
from torch import nn

from compress.core.loop import BaseHook, fit
from compress.core.masking import MaskEnforcer, keep_top
from compress.core.masks import MaskSet
from compress.core.schedules import anneal_count
from compress.errors import UserError
from compress.methods.base import Method, MethodParams, PruneContext, PruneResult
from compress.methods.presets import TINY_MLP, tiny
from compress.registry import register_method

# The paper's XOR targets (one logit). With more outputs the defaults scale per output unit:
# 12 hidden->output connections for 10 classes would leave most classes unconnected.
DEFAULT_TARGETS = {"output": 12, "input": 24}


class CPNAParams(MethodParams):
    anneal_epochs: int = Field(100, ge=1, description="epochs per annealing phase (N')")
    final_epochs: int = Field(10, ge=0, description="extra epochs at the final sparsity")
    mu: float = Field(10.0, ge=0, description="annealing rate: 0 linear, larger prunes earlier")
    output_connections: int | None = Field(
        None, ge=1, description="hidden->output kept (default 12 per output unit)")
    output_density: float | None = Field(None, gt=0, lt=1)
    input_connections: int | None = Field(
        None, ge=1, description="input->hidden kept (default 24 per output unit)")
    input_density: float | None = Field(None, gt=0, lt=1)
    hidden_density: float | None = Field(None, gt=0, lt=1, description="hidden->hidden layers")
    prune_input: bool = Field(True, description="false: CPNA(hidden), output connections only")
    order: Literal["sequential", "simultaneous"] = "sequential"
    input_score: Literal["path", "magnitude"] = Field(
        "path", description="rank input weights by |w_ji|*||a_j|| (path) or |w_ji|")
    normalize: bool = Field(True, description="node normalisation (CPNA); false is CPA")
    granularity: Literal["connection", "node"] = "connection"
    units: int | None = Field(None, ge=1, description="node variant: hidden units kept per layer")
    unit_density: float | None = Field(None, gt=0, lt=1)

    @model_validator(mode="after")
    def _targets(self):
        for group in ("output", "input"):
            count, dens = f"{group}_connections", f"{group}_density"
            if getattr(self, count) is not None and getattr(self, dens) is not None:
                raise ValueError(f"give {count} or {dens}, not both")
        if self.units is not None and self.unit_density is not None:
            raise ValueError("give units or unit_density, not both")
        return self


class CPAParams(CPNAParams):
    normalize: bool = Field(False, description="node normalisation (CPNA); false is CPA")


def linear_layers(model: nn.Module) -> list[tuple[str, nn.Linear]]:
    """The MLP's Linear layers in forward order; CPNA needs a plain stack of them."""
    layers = [(n, m) for n, m in model.named_modules() if isinstance(m, nn.Linear)]
    others = [n for n, m in model.named_modules()
              if n and not list(m.children()) and not isinstance(m, nn.Linear)]
    if len(layers) < 2 or others:
        raise UserError("cpna/cpa need an MLP (model.name=mlp): a stack of at least two "
                        f"Linear layers; this model has {others[:3] or 'too few layers'}")
    return layers


@torch.no_grad()
def normalize_units(layers: list[nn.Linear]) -> None:
    """Give every hidden unit a unit-norm incoming row, moving its scale to the next layer."""
    for layer, nxt in zip(layers[:-1], layers[1:]):
        c = layer.weight.norm(dim=1)
        c = torch.where(c > 0, c, torch.ones_like(c))
        layer.weight.div_(c[:, None])
        if layer.bias is not None:
            layer.bias.div_(c)
        nxt.weight.mul_(c[None, :])


def connection_scores(layers: list[nn.Linear], idx: int, input_score: str) -> torch.Tensor:
    """Score of each connection into layer idx's units; units without outputs score -inf."""
    w = layers[idx].weight.detach().abs()
    if idx == len(layers) - 1:
        return w.clone()
    out_norm = layers[idx + 1].weight.detach().norm(dim=0)
    scores = w * out_norm[:, None] if (idx == 0 and input_score == "path") else w.clone()
    return scores.masked_fill((out_norm == 0)[:, None], float("-inf"))


class CPNAHook(BaseHook):
    """Per-epoch normalise-and-prune, driven by the annealing schedule."""

    def __init__(self, p: CPNAParams, layers: list[tuple[str, nn.Linear]], enforcer: MaskEnforcer):
        self.p, self.enforcer = p, enforcer
        self.names = [f"{n}.weight" for n, _ in layers]
        self.mods = [m for _, m in layers]
        self.phases = self._phases()
        self.start: dict[int, int] = {}   # layer index -> connections when its phase began
        self.trace: list[dict] = []

    def _phases(self) -> list[list[int]]:
        last, middle = len(self.mods) - 1, list(range(1, len(self.mods) - 1))
        if self.p.granularity == "node":
            return [list(range(len(self.mods) - 1))]  # hidden layers, by unit
        first = [last] + (middle if self.p.hidden_density else [])
        if not self.p.prune_input:
            return [first]
        return [first, [0]] if self.p.order == "sequential" else [first + [0]]

    def total_epochs(self) -> int:
        return len(self.phases) * self.p.anneal_epochs + self.p.final_epochs

    def target(self, idx: int) -> int:
        size = self.mods[idx].weight.numel()
        group = "output" if idx == len(self.mods) - 1 else ("input" if idx == 0 else "hidden")
        if group == "hidden":
            return round(self.p.hidden_density * size)
        count, dens = getattr(self.p, f"{group}_connections"), getattr(self.p, f"{group}_density")
        per_output = self.mods[-1].out_features
        return min(size, count if count is not None else
                   round(dens * size) if dens is not None else DEFAULT_TARGETS[group] * per_output)

    def unit_target(self, idx: int) -> int:
        width = self.mods[idx].out_features
        if self.p.units is not None:
            return min(width, self.p.units)
        return max(1, round((self.p.unit_density or 0.05) * width))

    def on_fit_start(self, state) -> None:
        self._update(state, 0)

    def on_epoch_end(self, state, row) -> None:
        self._update(state, state.epoch)
        row["connections"] = float(sum(self.enforcer.masks.kept().values()))

    @torch.no_grad()
    def _update(self, state, epoch: int) -> None:
        if self.p.normalize:
            normalize_units(self.mods)
        masks = dict(self.enforcer.masks)
        phase, e = divmod(epoch, self.p.anneal_epochs)
        for i, group in enumerate(self.phases[:phase + 1]):
            step = e if i == phase else self.p.anneal_epochs
            for idx in group:
                self._prune(masks, idx, step)
        self._remove_dead(masks)
        self.enforcer.update(MaskSet(masks), state.optimizer)

    def _prune(self, masks: dict, idx: int, step: int) -> None:
        if self.p.granularity == "node":
            return self._prune_units(masks, idx, step)
        name = self.names[idx]
        start = self.start.setdefault(idx, int(masks[name].sum()))
        keep = anneal_count(start, self.target(idx), step, self.p.anneal_epochs, self.p.mu)
        scores = connection_scores(self.mods, idx, self.p.input_score)
        scores = scores.masked_fill(~masks[name].to(scores.device), float("-inf"))
        masks[name] = keep_top(scores, min(keep, int(torch.isfinite(scores).sum()))).cpu()

    def _prune_units(self, masks: dict, idx: int, step: int) -> None:
        rows, cols = masks[self.names[idx]], masks[self.names[idx + 1]]
        alive = rows.any(1) & cols.any(0)
        start = self.start.setdefault(idx, int(alive.sum()))
        keep = anneal_count(start, self.unit_target(idx), step, self.p.anneal_epochs, self.p.mu)
        w_in = self.mods[idx].weight.cpu() * rows  # masks live on the CPU (MaskSet)
        w_out = self.mods[idx + 1].weight.cpu() * cols
        score = (w_in.norm(dim=1) * w_out.norm(dim=0)).masked_fill(~alive, float("-inf"))
        kept = keep_top(score, min(keep, int(alive.sum())))
        masks[self.names[idx]] = rows & kept[:, None]
        masks[self.names[idx + 1]] = cols & kept[None, :]

    def _remove_dead(self, masks: dict) -> None:
        """A hidden unit without outgoing connections is dead: drop its incoming ones too."""
        for idx in range(len(self.mods) - 2, -1, -1):
            has_out = masks[self.names[idx + 1]].any(0)
            masks[self.names[idx]] = masks[self.names[idx]] & has_out[:, None]


@register_method
class CPNA(Method):
    name = "cpna"
    summary = "annealed connection pruning with node normalisation (CPNA paper)"
    Params = CPNAParams
    test_settings = tiny(TINY_MLP, anneal_epochs=4, final_epochs=1, output_connections=5,
                         input_connections=9)

    def check(self, p: CPNAParams, ctx: PruneContext) -> None:
        linear_layers(ctx.model)

    def run(self, p: CPNAParams, ctx: PruneContext) -> PruneResult:
        layers = linear_layers(ctx.model)
        params = dict(ctx.model.named_parameters())
        missing = [f"{n}.weight" for n, _ in layers if f"{n}.weight" not in ctx.masks]
        masks = MaskSet({**dict(ctx.masks),
                         **{n: torch.ones_like(params[n], dtype=torch.bool) for n in missing}})
        enforcer = MaskEnforcer(masks)
        hook = CPNAHook(p, layers, enforcer)
        history = fit(ctx.model, ctx.data, ctx.train, seed=ctx.seed, hooks=[hook],
                      masks=enforcer, duration=f"{hook.total_epochs()}ep",
                      progress=self.name if ctx.progress else None)
        info = {"phases": hook.phases, "epochs": hook.total_epochs(),
                "targets": {hook.names[i]: hook.target(i) for g in hook.phases for i in g}}
        return PruneResult(enforcer.masks, history, info)


@register_method
class CPA(CPNA):
    name = "cpa"
    summary = "annealed connection pruning without node normalisation (CPA)"
    Params = CPAParams
