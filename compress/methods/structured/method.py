"""Channel pruning: `l1filter` (Li et al. 2017) and `slimming` (Liu et al. 2017).

Both remove whole channels and attention heads, as coupled groups (compress.core.chgraph): a
conv's output channels with everything tied to them (BatchNorm, residual sums, gates,
depthwise convs, the consumers that read them), a per-token Linear's hidden units (transformer
and ConvNeXt MLPs), an attention layer's heads. Where zeroing a channel's slices removes it
exactly, the result is a mask, like every other method's: the channel is exactly zero, stays
zero through fine-tuning, and the export removes it physically (`export.shrink`). Where it does
not (a LayerNorm normalising over the channels), the method cuts the smaller model and
fine-tunes that (pruning.py beside this file); the stage records the architecture spec that
rebuilds it.

Which groups are pruned (`coupled`, `linear`, `heads`, `physical`, `keep_dense`): by default
every group, coupled ones included, so the requested sparsity is reachable; `coupled: false`
is Li et al.'s ResNet rule (only groups one layer produces: the first conv of each block).
Groups a grouped convolution or a channel shuffle splits keep the same share of every block.
The stage reports achieved channel sparsity and MACs ratio next to the requested ones.

- l1filter: per group, the units whose filters have the smallest L1 norm go (`sparsity` per
  group, `layer_sparsity` to override it; heads by the L1 norm of their q/k/v rows), then
  fine-tuning. For Scratch-E / Scratch-B, retrain the result with `--mode scratch_e | scratch_b`.
- slimming: training with s * sign(gamma) added to the gradient of every BatchNorm scale that
  gates a prunable channel (`penalty`, `sparsity_train`), one global threshold on |gamma| that
  removes `sparsity` of all those channels, each layer keeping at least `min_channels`, then
  fine-tuning.
"""

from __future__ import annotations

from typing import Literal

import torch
from pydantic import Field

from compress.methods.structured import pruning as cp
from compress.core import scoring
from compress.core.channels import ChannelGroup, channel_graph, groups_by_name
from compress.core.loop import BaseHook
from compress.core.masking import keep_top
from compress.core.schedules import DurationStr
from compress.errors import UserError
from compress.methods.base import DensityTarget, Method, PruneContext, PruneResult, train_masked
from compress.methods.presets import TINY_CNN, TINY_MLP, tiny
from compress.registry import register_method

# Conv-4 with BatchNorm at a quarter width on the 5k MNIST subset: pretrain + prune + export in
# about a minute on 2 cores.
STRUCTURED_DEFAULTS = {
    "data": {"name": "mnist5k"}, "model": {"name": "conv4", "width": 0.25, "batchnorm": True},
    "train": {"optimizer": "sgd", "lr": 0.05, "momentum": 0.9, "weight_decay": 5e-4,
              "batch_size": 128, "duration": "4ep"}}


class ChannelParams(DensityTarget):
    density: float | None = Field(None, gt=0, lt=1, description="fraction of CHANNELS kept")
    sparsity: float | None = Field(None, gt=0, lt=1, description="fraction of CHANNELS removed")
    heads: float | None = Field(None, ge=0, lt=1, description="fraction of attention HEADS "
                                                              "removed per layer (default: sparsity)")
    coupled: bool = Field(True, description="also prune channels tied by residual sums "
                                            "(false: Li et al.'s rule, single-layer groups only)")
    linear: bool = Field(False, description="also prune the hidden units of Linear layers on "
                                            "flat vectors (per-token Linears always count)")
    physical: bool | Literal["auto"] = Field(
        "auto", description="cut the smaller model and fine-tune it: auto = only where a mask "
                            "cannot remove channels exactly (LayerNorm over them)")
    keep_dense: list[str] = Field(default_factory=list, description="layers whose channels all stay")
    round_to: int = Field(1, ge=1, description="channels kept per layer: a multiple of this "
                                               "(hardware-friendly widths; 1 = off)")
    finetune: DurationStr = Field("2ep", description="training after pruning ('0ep' for none)")

    def default_density(self) -> float:
        return 0.5

    def head_sparsity(self) -> float:
        return 1 - self.density if self.heads is None else self.heads


class L1FilterParams(ChannelParams):
    layer_sparsity: dict[str, float] = Field(
        default_factory=dict, description="per-layer fraction of channels removed (overrides sparsity)")


class SlimmingParams(ChannelParams):
    penalty: float = Field(1e-4, ge=0, description="s: s * sign(gamma) joins each BN scale's gradient")
    sparsity_train: DurationStr = Field("3ep", description="training with the penalty before pruning")
    min_channels: int = Field(1, ge=1, description="channels every layer keeps at least")


def _hint(method: str) -> str:
    return f"{method} prunes channels of models torch.fx can trace; for this model use an " \
           "unstructured method (magnitude, imp, gmp)"


def _groups(p: ChannelParams, ctx: PruneContext, method: str, extra=None,
            empty: str | None = None) -> cp.Plan:
    example = ctx.data.train.head(1)
    ignore = [n.removesuffix(".weight") for n in p.keep_dense]
    graph = channel_graph(ctx.model, example, ignore=ignore, hint=_hint(method))
    scope = cp.Scope(p.coupled, p.linear, p.head_sparsity() > 0, p.physical)
    plan = cp.choose(graph, scope, example, extra)
    if not plan.chosen and empty:
        raise UserError(empty)
    if not plan.chosen:
        what = "conv channels or hidden units" if p.linear else "conv channels"
        more = "" if p.linear else "; --set method.linear=true also prunes Linear hidden units"
        raise UserError(f"{method}: {type(ctx.model).__name__} has no {what} it may prune "
                        f"(coupled: {p.coupled}, keep_dense: {p.keep_dense}){more}")
    return plan


def _rounded(keep: int, size: int, multiple: int) -> int:
    """`keep` to the nearest multiple of `multiple` (at least one multiple, at most size)."""
    if multiple == 1:
        return keep
    return min(size, max(multiple, int(keep / multiple + 0.5) * multiple))


def _layer_keep(g: ChannelGroup, sparsity: float, p: ChannelParams, option: str) -> int:
    keep = int((1 - sparsity) * g.size + 0.5)
    if keep < 1:  # refused as asked, before rounding could lift it
        what = "heads of attention layer" if g.kind == "heads" else "channels of layer"
        raise UserError(f"{option}={sparsity:g} would remove all {g.size} {what} "
                        f"{g.name.removesuffix('.heads')!r}; lower it or add the layer to "
                        "method.keep_dense")
    return keep if g.cells is not None or g.kind == "heads" else _rounded(keep, g.size, p.round_to)


def _requested(p: ChannelParams, plan: cp.Plan) -> dict[str, float]:
    out = {"channel_sparsity": 1 - p.density}
    if any(g.kind == "heads" for g in plan.graph.groups):
        out["heads_sparsity"] = p.head_sparsity()
    return out


def _prune(p: ChannelParams, ctx: PruneContext, plan: cp.Plan, scores: dict[str, torch.Tensor],
           keep: dict[str, int]) -> tuple[cp.Pruned, dict]:
    """Each chosen group's lowest-scored units removed down to keep[group] (masked, or cut out
    of ctx.model), and what was kept against what was asked."""
    from compress.core.structure import count_macs
    dense_macs = count_macs(ctx.model, plan.example)
    kept = {g.name: cp.kept_units(g, scores[g.name], count=keep[g.name]) for g in plan.chosen}
    pruned = cp.prune(ctx.model, plan, kept, ctx.masks, p.physical)
    total = sum(g.size for g in plan.chosen if g.kind == "channels")
    info = {"channels": {g.name: {"kept": int(kept[g.name].sum()), "total": g.size}
                         for g in plan.chosen},
            "channel_density": sum(int(kept[g.name].sum()) for g in plan.chosen
                                   if g.kind == "channels") / max(total, 1),
            "round_to": p.round_to, "coupled": p.coupled,
            "pruning": cp.report(plan, pruned, _requested(p, plan), dense_macs, ctx.model)}
    return pruned, info


def _result(pruned: cp.Pruned, history: list[dict], info: dict) -> PruneResult:
    return PruneResult(pruned.masks, history, info, architecture=pruned.architecture)


# ------------------------------------------------------------------------- l1filter
def _l1_keep(p: L1FilterParams, plan: cp.Plan) -> dict[str, int]:
    lookup = groups_by_name(plan.chosen)
    unknown = [n for n in p.layer_sparsity if n.removesuffix(".weight") not in lookup]
    if unknown:
        why = _why_whole(plan, unknown[0].removesuffix(".weight"))
        raise UserError(f"method.layer_sparsity names {', '.join(map(repr, unknown))}, not a "
                        f"layer l1filter prunes{why}; it prunes: "
                        f"{', '.join(g.name for g in plan.chosen[:12])}"
                        f"{', ...' if len(plan.chosen) > 12 else ''}")
    rates = {lookup[n.removesuffix(".weight")].name: s for n, s in p.layer_sparsity.items()}
    for name, s in rates.items():
        if not 0 <= s < 1:
            raise UserError(f"method.layer_sparsity[{name!r}]={s:g} must be in [0, 1)")

    def default(g: ChannelGroup) -> tuple[float, str]:
        if g.kind == "heads":
            return p.head_sparsity(), "method.heads"
        return 1 - p.density, "method.sparsity"
    out = {}
    for g in plan.chosen:
        rate, option = (rates[g.name], f"method.layer_sparsity[{g.name!r}]") \
            if g.name in rates else default(g)
        out[g.name] = _layer_keep(g, rate, p, option)
    return out


def _why_whole(plan: cp.Plan, layer: str) -> str:
    """' (it stays whole: REASON)' when `layer` is in a group the plan leaves whole."""
    skipped = groups_by_name([g for g in plan.graph.groups if g.name in plan.skipped])
    if layer in skipped:
        return f" (its group stays whole: {plan.skipped[skipped[layer].name]})"
    if layer in plan.graph.whole:
        return f" (its group stays whole: {plan.graph.whole[layer]})"
    return ""


@register_method
class L1Filter(Method):
    name = "l1filter"
    summary = "L1-norm filter pruning (Li et al.): smallest filters per layer, then fine-tune"
    Params = L1FilterParams
    defaults = STRUCTURED_DEFAULTS
    test_settings = tiny(TINY_MLP, density=0.3, linear=True, finetune="1ep")

    def check(self, p: L1FilterParams, ctx: PruneContext) -> None:
        _l1_keep(p, _groups(p, ctx, self.name))

    def run(self, p: L1FilterParams, ctx: PruneContext) -> PruneResult:
        plan = _groups(p, ctx, self.name)
        keep = _l1_keep(p, plan)
        scores = {g.name: scoring.filter_l1(ctx.model, g) for g in plan.chosen}
        pruned, info = _prune(p, ctx, plan, scores, keep)
        return _result(pruned, train_masked(ctx, pruned.masks, p.finetune, self.name), info)


# ------------------------------------------------------------------------- slimming
class BNScalePenalty(BaseHook):
    """Adds s * sign(gamma) to the gradient of each given BatchNorm scale (the L1 subgradient)."""

    def __init__(self, scales: list[torch.Tensor], s: float):
        self.scales, self.s = scales, s

    @torch.no_grad()
    def after_backward(self, state) -> None:
        for w in self.scales:
            if w.grad is not None:
                w.grad.add_(torch.sign(w), alpha=self.s)


def _bn_groups(p: SlimmingParams, ctx: PruneContext) -> cp.Plan:
    def no_scale(g: ChannelGroup) -> str | None:
        return None if scoring.bn_scale(ctx.model, g) is not None else \
            "no affine BatchNorm scales them"
    return _groups(p, ctx, "slimming", no_scale, empty=(
        f"slimming: no prunable channel of {type(ctx.model).__name__} is scaled by an affine "
        "BatchNorm; use a model with BatchNorm (e.g. --set model.batchnorm=true for conv2/4/6, "
        "resnet20) or l1filter"))


def _bn_scales(model, groups: list[ChannelGroup]) -> list[torch.Tensor]:
    modules, params = dict(model.named_modules()), dict(model.named_parameters())
    names = {m.param for g in groups for m in g.members
             if m.produces and m.param.endswith(".weight")
             and isinstance(modules[m.param.rpartition(".")[0]], torch.nn.modules.batchnorm._BatchNorm)}
    return [params[n] for n in sorted(names)]


def _global_keep(p: SlimmingParams, plan: cp.Plan, scores: dict[str, torch.Tensor]
                 ) -> tuple[dict[str, int], float]:
    """Channels kept per group under one threshold over all groups (then the per-layer guard
    and rounding), and the threshold: the largest |gamma| that went."""
    flat = torch.cat([scores[g.name] for g in plan.chosen])
    kept = keep_top(flat, int(p.density * flat.numel() + 0.5))
    dropped = flat[~kept]
    keep, start = {}, 0
    for g in plan.chosen:
        n = int(kept[start:start + g.size].sum())
        n = max(n, min(p.min_channels, g.size))
        keep[g.name] = n if g.cells is not None else _rounded(n, g.size, p.round_to)
        start += g.size
    return keep, float(dropped.max()) if dropped.numel() else 0.0


@register_method
class Slimming(Method):
    name = "slimming"
    summary = "network slimming (Liu et al.): L1 on BN scales, one global threshold, fine-tune"
    Params = SlimmingParams
    defaults = STRUCTURED_DEFAULTS
    test_settings = tiny(TINY_CNN, density=0.3, sparsity_train="1ep", finetune="1ep")

    def check(self, p: SlimmingParams, ctx: PruneContext) -> None:
        _bn_groups(p, ctx)

    def run(self, p: SlimmingParams, ctx: PruneContext) -> PruneResult:
        plan = _bn_groups(p, ctx)
        penalty = BNScalePenalty(_bn_scales(ctx.model, plan.chosen), p.penalty)
        history = train_masked(ctx, ctx.masks, p.sparsity_train, "slimming:sparsity",
                               hooks=[penalty])
        scores = {g.name: scoring.bn_scale(ctx.model, g) for g in plan.chosen}
        keep, threshold = _global_keep(p, plan, scores)
        pruned, info = _prune(p, ctx, plan, scores, keep)
        history += _after(history, train_masked(ctx, pruned.masks, p.finetune,
                                                "slimming:finetune"))
        return _result(pruned, history, {**info, "threshold": threshold, "penalty": p.penalty})


def _after(first: list[dict], rows: list[dict]) -> list[dict]:
    """`rows` of a second training numbered on from `first` (one history, steps increasing)."""
    if not first:
        return rows
    epoch, step = first[-1]["epoch"] + 1, first[-1]["step"]
    return [{**r, "epoch": r["epoch"] + epoch, "step": r["step"] + step} for r in rows]

