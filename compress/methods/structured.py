"""Channel pruning: `l1filter` (Li et al. 2017) and `slimming` (Liu et al. 2017).

Both remove whole channels: a conv's output channels (and, with `linear: true`, a Linear
layer's hidden units), as coupled channel groups (compress.core.channels). A removed channel
loses its filter, bias, BatchNorm scale and shift and the consumer slices that read it, all
in the mask, so it is exactly zero, stays zero through fine-tuning, and the export removes it
physically (`export.shrink`).

Which groups are pruned: by default those produced by a single layer. In a ResNet that is the
first conv of each basic block, Li et al.'s rule: the second conv's output is tied by the
residual sum to the block's input and to every other block of the stage. `coupled: true` prunes
the tied groups too, scoring a channel over every layer that produces it. Depthwise convs
follow the channels of the layer before them and do not count as a coupling.

- l1filter: per layer, the channels whose filters have the smallest L1 norm go (`sparsity` per
  layer, `layer_sparsity` to override it), then fine-tuning. For Scratch-E / Scratch-B, retrain
  the result with `--mode scratch_e | scratch_b`.
- slimming: training with s * sign(gamma) added to the gradient of every BatchNorm scale that
  gates a prunable channel (`penalty`, `sparsity_train`), one global threshold on |gamma| that
  removes `sparsity` of all those channels, each layer keeping at least `min_channels`, then
  fine-tuning.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from pydantic import Field
from torch import nn

from compress.core import scoring
from compress.core.channels import ChannelGroup, channel_groups, channel_masks, groups_by_name
from compress.core.loop import BaseHook
from compress.core.masking import apply_masks, keep_top, prunable_parameters
from compress.core.masks import MaskSet
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
    coupled: bool = Field(False, description="also prune channels tied by residual sums")
    linear: bool = Field(False, description="also prune the hidden units of Linear layers")
    keep_dense: list[str] = Field(default_factory=list, description="layers whose channels all stay")
    round_to: int = Field(1, ge=1, description="channels kept per layer: a multiple of this "
                                               "(hardware-friendly widths; 1 = off)")
    finetune: DurationStr = Field("2ep", description="training after pruning ('0ep' for none)")

    def default_density(self) -> float:
        return 0.5


class L1FilterParams(ChannelParams):
    layer_sparsity: dict[str, float] = Field(
        default_factory=dict, description="per-layer fraction of channels removed (overrides sparsity)")


class SlimmingParams(ChannelParams):
    penalty: float = Field(1e-4, ge=0, description="s: s * sign(gamma) joins each BN scale's gradient")
    sparsity_train: DurationStr = Field("3ep", description="training with the penalty before pruning")
    min_channels: int = Field(1, ge=1, description="channels every layer keeps at least")


@dataclass
class _Groups:
    chosen: list[ChannelGroup]
    example: torch.Tensor


def _hint(method: str) -> str:
    return f"{method} prunes channels of Conv/Linear/BatchNorm nets; for this model use an " \
           "unstructured method (magnitude, imp, gmp)"


def _producers(model: nn.Module, g: ChannelGroup) -> list[nn.Module]:
    """The layers producing the group's channels, without the depthwise convs that follow them."""
    modules = dict(model.named_modules())
    return [m for m in (modules[n] for n in g.layers)
            if not (isinstance(m, nn.modules.conv._ConvNd) and m.groups > 1)]


def _groups(p: ChannelParams, ctx: PruneContext, method: str) -> _Groups:
    example = ctx.data.train.head(1)
    ignore = [n.removesuffix(".weight") for n in p.keep_dense]
    groups = channel_groups(ctx.model, example, ignore=ignore, hint=_hint(method))
    kinds = (nn.modules.conv._ConvNd, nn.Linear) if p.linear else (nn.modules.conv._ConvNd,)
    chosen = []
    for g in groups:
        producers = _producers(ctx.model, g)
        if producers and all(isinstance(m, kinds) for m in producers) \
                and (p.coupled or len(producers) == 1):
            chosen.append(g)
    if not chosen:
        what = "conv channels or hidden units" if p.linear else "conv channels"
        more = "" if p.linear else "; --set method.linear=true also prunes Linear hidden units"
        raise UserError(f"{method}: {type(ctx.model).__name__} has no {what} it may prune "
                        f"(coupled: {p.coupled}, keep_dense: {p.keep_dense}){more}")
    return _Groups(chosen, example)


def _rounded(keep: int, size: int, multiple: int) -> int:
    """`keep` to the nearest multiple of `multiple` (at least one multiple, at most size)."""
    if multiple == 1:
        return keep
    return min(size, max(multiple, int(keep / multiple + 0.5) * multiple))


def _layer_keep(g: ChannelGroup, sparsity: float, p: ChannelParams, option: str) -> int:
    keep = int((1 - sparsity) * g.size + 0.5)
    if keep < 1:  # refused as asked, before rounding could lift it
        raise UserError(f"{option}={sparsity:g} would remove all {g.size} channels of layer "
                        f"{g.name!r}; lower it or add the layer to method.keep_dense")
    return _rounded(keep, g.size, p.round_to)


def _prune(p: ChannelParams, ctx: PruneContext, found: _Groups, scores: dict[str, torch.Tensor],
           keep: dict[str, int]) -> tuple[MaskSet, dict]:
    """Masks dropping each group's lowest-scored channels down to keep[group], on top of the
    starting masks, applied to the model; and what was kept."""
    drop = {g.name: torch.nonzero(~keep_top(scores[g.name], keep[g.name])).flatten()
            for g in found.chosen}
    cm = {n: m.cpu() for n, m in channel_masks(ctx.model, found.example, drop,
                                               found.chosen).items()}
    params = dict(ctx.model.named_parameters())
    names = dict.fromkeys([*prunable_parameters(ctx.model), *ctx.masks, *cm])
    masks = MaskSet({n: _mask(ctx.masks, n, params[n]) & cm.get(n, True) for n in names})
    apply_masks(ctx.model, masks)
    total = sum(g.size for g in found.chosen)
    info = {"channels": {g.name: {"kept": keep[g.name], "total": g.size} for g in found.chosen},
            "channel_density": sum(keep.values()) / total, "round_to": p.round_to,
            "coupled": p.coupled}
    return masks, info


def _mask(masks: MaskSet, name: str, param: torch.Tensor) -> torch.Tensor:
    return masks[name] if name in masks else torch.ones(param.shape, dtype=torch.bool)


# ------------------------------------------------------------------------- l1filter
def _l1_keep(p: L1FilterParams, found: _Groups) -> dict[str, int]:
    lookup = groups_by_name(found.chosen)
    unknown = [n for n in p.layer_sparsity if n.removesuffix(".weight") not in lookup]
    if unknown:
        raise UserError(f"method.layer_sparsity names {', '.join(map(repr, unknown))}, not a "
                        f"layer l1filter prunes; it prunes: {', '.join(g.name for g in found.chosen)}")
    rates = {lookup[n.removesuffix(".weight")].name: s for n, s in p.layer_sparsity.items()}
    for name, s in rates.items():
        if not 0 <= s < 1:
            raise UserError(f"method.layer_sparsity[{name!r}]={s:g} must be in [0, 1)")
    return {g.name: _layer_keep(g, rates.get(g.name, 1 - p.density), p,
                                f"method.layer_sparsity[{g.name!r}]" if g.name in rates
                                else "method.sparsity")
            for g in found.chosen}


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
        found = _groups(p, ctx, self.name)
        keep = _l1_keep(p, found)
        scores = {g.name: scoring.filter_l1(ctx.model, g) for g in found.chosen}
        masks, info = _prune(p, ctx, found, scores, keep)
        return PruneResult(masks, train_masked(ctx, masks, p.finetune, self.name), info)


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


def _bn_groups(p: SlimmingParams, ctx: PruneContext) -> _Groups:
    found = _groups(p, ctx, "slimming")
    found.chosen = [g for g in found.chosen if scoring.bn_scale(ctx.model, g) is not None]
    if not found.chosen:
        raise UserError(f"slimming: no prunable channel of {type(ctx.model).__name__} is scaled by "
                        "an affine BatchNorm; use a model with BatchNorm (e.g. "
                        "--set model.batchnorm=true for conv2/4/6, resnet20) or l1filter")
    return found


def _bn_scales(model: nn.Module, groups: list[ChannelGroup]) -> list[torch.Tensor]:
    modules, params = dict(model.named_modules()), dict(model.named_parameters())
    names = {n for g in groups for n in g.out_params
             if n.endswith(".weight") and isinstance(modules[n.rpartition(".")[0]],
                                                     nn.modules.batchnorm._BatchNorm)}
    return [params[n] for n in sorted(names)]


def _global_keep(p: SlimmingParams, found: _Groups, scores: dict[str, torch.Tensor]
                 ) -> tuple[dict[str, int], float]:
    """Channels kept per group under one threshold over all groups (then the per-layer guard
    and rounding), and the threshold: the largest |gamma| that went."""
    flat = torch.cat([scores[g.name] for g in found.chosen])
    kept = keep_top(flat, int(p.density * flat.numel() + 0.5))
    dropped = flat[~kept]
    keep, start = {}, 0
    for g in found.chosen:
        n = int(kept[start:start + g.size].sum())
        keep[g.name] = _rounded(max(n, min(p.min_channels, g.size)), g.size, p.round_to)
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
        found = _bn_groups(p, ctx)
        penalty = BNScalePenalty(_bn_scales(ctx.model, found.chosen), p.penalty)
        history = train_masked(ctx, ctx.masks, p.sparsity_train, "slimming:sparsity",
                               hooks=[penalty])
        scores = {g.name: scoring.bn_scale(ctx.model, g) for g in found.chosen}
        keep, threshold = _global_keep(p, found, scores)
        masks, info = _prune(p, ctx, found, scores, keep)
        history += _after(history, train_masked(ctx, masks, p.finetune, "slimming:finetune"))
        return PruneResult(masks, history, {**info, "threshold": threshold, "penalty": p.penalty})


def _after(first: list[dict], rows: list[dict]) -> list[dict]:
    """`rows` of a second training numbered on from `first` (one history, steps increasing)."""
    if not first:
        return rows
    epoch, step = first[-1]["epoch"] + 1, first[-1]["step"]
    return [{**r, "epoch": r["epoch"] + epoch, "step": r["step"] + step} for r in rows]

