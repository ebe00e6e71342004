"""Pruning whole channels and heads of a model: which groups, how many units, masks or surgery,
and what was achieved against what was asked.

A method (l1filter, slimming) picks the groups it may prune (`scope`), scores their units, and
calls `prune`: when every chosen group is exact (zeroing a unit's slices equals removing it),
the units are masked, as every other method's result is; otherwise (LayerNorm across the
channels, or `physical: true`) the model itself is cut (compress.core.surgery) and the
architecture step that rebuilds it is returned with masks of the smaller model. Either way
`report` gives the achieved channel and head sparsity and MACs ratio next to the requested
ones, and names the groups left whole with the reason.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field

import torch
from torch import nn

from compress.core.chgraph import INPUT, OUTPUT, ChannelGraph, Group, cell_counts
from compress.core.masking import apply_masks, keep_top, prunable_parameters
from compress.core.masks import MaskSet

GAP = 0.1  # achieved vs requested sparsity beyond which the report lists what stayed whole


@dataclass
class Scope:
    """Which groups a method prunes, and why the others are left out."""

    coupled: bool = True           # groups produced by several layers (residual sums)
    linear: bool = False           # hidden units of Linear layers on flat vectors
    heads: bool = True             # attention heads
    physical: bool | str = "auto"  # groups only surgery removes exactly


@dataclass
class Plan:
    graph: ChannelGraph
    scope: Scope
    chosen: list[Group] = field(default_factory=list)
    skipped: dict[str, str] = field(default_factory=dict)
    example: torch.Tensor | None = None


def choose(graph: ChannelGraph, scope: Scope, example: torch.Tensor,
           extra=None) -> Plan:
    """The groups `scope` allows (and `extra(group)` returns no reason against)."""
    plan = Plan(graph, scope, example=example)
    for g in graph.groups:
        reason = _excluded(g, scope) or (extra(g) if extra else None)
        if reason:
            plan.skipped[g.name] = reason
        else:
            plan.chosen.append(g)
    return plan


def _excluded(g: Group, scope: Scope) -> str | None:
    if g.kind == "heads":
        return None if scope.heads else "method.heads=0 keeps every head"
    if g.flat_linear and not scope.linear:
        return "Linear hidden units (method.linear=true prunes them)"
    if len(g.layers) > 1 and not scope.coupled:
        return (f"tied to {len(g.layers)} layers by residual sums (method.coupled=true "
                "prunes it)")
    if not g.exact and scope.physical is False:
        return (f"a mask cannot remove them exactly ({g.inexact}); method.physical=auto "
                "removes them physically")
    return None


def kept_units(g: Group, scores: torch.Tensor, fraction: float | None = None,
               count: int | None = None) -> torch.Tensor:
    """Boolean per unit: the best-scored `count` (or `fraction` of the) units; with cells
    (grouped convs, chunks), the same share of every cell."""
    if g.cells is None:
        n = count if count is not None else int(fraction * g.size + 0.5)
        return keep_top(scores, n)
    share = fraction if fraction is not None else count / g.size
    kept = torch.zeros(g.size, dtype=torch.bool)
    for c, k in enumerate(cell_counts(g.cells, share).tolist()):
        units = torch.nonzero(g.cells == c).flatten()
        kept[units[keep_top(scores[units], k)]] = True
    return kept


@dataclass
class Pruned:
    masks: MaskSet
    architecture: dict | None   # the surgery step, None when masked
    removed: dict[str, list[int]]


def prune(model: nn.Module, plan: Plan, keep: dict[str, torch.Tensor], masks: MaskSet,
          physical: bool | str) -> Pruned:
    """Remove the units not in `keep[group]`: masked when every chosen group is exact and
    `physical` is not True, else cut out of `model` (in place). `masks` are the starting
    masks; the result's masks refer to the (possibly smaller) model."""
    from compress.core.channels import channel_masks
    from compress.core.surgery import cut, step
    removed = {g.name: torch.nonzero(~keep[g.name]).flatten().tolist() for g in plan.chosen}
    removed = {k: v for k, v in removed.items() if v}
    surgery = physical is True or any(not g.exact for g in plan.chosen)
    if not surgery:
        cm = {n: m.cpu() for n, m in channel_masks(model, plan.example, removed,
                                                   plan.chosen).items()}
        params = dict(model.named_parameters())
        names = dict.fromkeys([*prunable_parameters(model), *masks, *cm])
        out = MaskSet({n: _mask(masks, n, params[n]) & cm.get(n, True) for n in names})
        apply_masks(model, out)
        return Pruned(out, None, removed)
    slicer = cut(model, plan.graph, removed)
    sliced = slicer(dict(masks))
    params = dict(model.named_parameters())
    names = dict.fromkeys([*prunable_parameters(model), *sliced])
    out = MaskSet({n: sliced[n] if n in sliced else torch.ones(params[n].shape, dtype=torch.bool)
                   for n in names if n in params})
    apply_masks(model, out)
    return Pruned(out, step(plan.graph, removed), removed)


def _mask(masks: MaskSet, name: str, param: torch.Tensor) -> torch.Tensor:
    return masks[name] if name in masks else torch.ones(param.shape, dtype=torch.bool)


def report(plan: Plan, pruned: Pruned, requested: dict[str, float], dense_macs: int,
           model: nn.Module) -> dict:
    """Requested vs achieved channel (and head) sparsity and the MACs ratio; the groups left
    whole with the reason, listed when the achieved sparsity is more than GAP off. Channels
    are those the request is about: every group but the model's input and output, and
    without `linear` in the plan's scope the hidden units of Linear layers on flat vectors."""
    from compress.core.structure import count_macs
    from compress.core.surgery import cut
    if pruned.architecture is None:  # the masked model's MACs once shrunk
        net = copy.deepcopy(model)
        cut(net, plan.graph, pruned.removed)
    else:
        net = model
    macs = count_macs(net, plan.example[:1])
    total = {"channels": 0, "heads": 0}
    gone = {"channels": 0, "heads": 0}
    for name, (kind, size, flat) in plan.graph.sizes.items():
        if plan.graph.whole.get(name) in (INPUT, OUTPUT) or (flat and not plan.scope.linear):
            continue
        total[kind] += size
        gone[kind] += len(pruned.removed.get(name, ()))
    keys = {"channels": "channel_sparsity", "heads": "heads_sparsity"}
    achieved = {keys[k]: gone[k] / total[k] for k in total if total[k]}
    achieved["macs_ratio"] = dense_macs / max(macs, 1)
    left = {**{n: r for n, r in plan.graph.whole.items() if r not in (INPUT, OUTPUT)},
            **plan.skipped}
    out = {"requested": requested, "achieved": achieved, "physical":
           pruned.architecture is not None, "macs": {"dense": dense_macs, "pruned": macs},
           "left_whole": left}
    gaps = [k for k, v in requested.items() if k in achieved and abs(achieved[k] - v) > GAP]
    if gaps:
        shown = "; ".join(f"{n}: {r}" for n, r in list(left.items())[:8])
        more = f" (and {len(left) - 8} more)" if len(left) > 8 else ""
        out["note"] = (", ".join(f"{k.replace('_', ' ')} {achieved[k]:.2f} vs {requested[k]:.2f}"
                                 f" requested" for k in gaps)
                       + (f"; left whole: {shown}{more}" if left else ""))
    return out
