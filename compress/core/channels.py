"""Channel groups, channel masks, dead channels, and the verified channel shrink.

The groups come from compress.core.chgraph: a conv's output channel, its BatchNorm, every
layer added to it in a residual sum, a gate multiplying it, the depthwise conv reading it and
the input slice of every consumer (the classifier after a flatten included) go together; an
attention layer's heads form a group of their own. This module turns groups into masks, finds
the channels a mask has killed, and removes them physically (compress.core.surgery), checking
the result against the masked model.

A unit is dead when removing it cannot change the output, for one of two reasons:
- nothing produces it: every parameter slice producing it (filter and bias, BatchNorm or
  LayerNorm scale and shift, a per-channel parameter added or multiplied in, a head's query,
  key and value rows) is zero after masking, each non-affine BatchNorm has running mean 0
  there, and the analysis proved that zero reaches every reader as zero (ReLU-like
  activations, sums, pooling, concat keep it; a gate multiplying it keeps the product zero);
- nothing reads it: every consumer slice reading it is zero.
Only exact groups qualify (no LayerNorm, softmax or mean across their channels: removing a
channel there changes the statistics of the others); the rest are left whole with the reason.
"""

from __future__ import annotations

import copy
import math
from typing import Mapping, Sequence

import torch
from torch import nn

from compress.core.chgraph import ChannelGraph, GraphUnsupported, Group, Member, analyse
from compress.errors import UserError

SHRINK_HINT = "export with masks only (--set export.shrink=false)"
ChannelGroup = Group


class ShrinkError(UserError):
    """The shrunk model differs from the masked model (a bug, never expected)."""


class ShrinkUnsupported(ShrinkError):
    """The model cannot be analysed, or a dead channel cannot be removed (export.shrink=true)."""


def _on_device(model: nn.Module, example: torch.Tensor) -> torch.Tensor:
    param = next(iter(model.parameters()), None)
    return example.to(param.device) if param is not None else example


def channel_graph(model: nn.Module, example: torch.Tensor, ignore: Sequence[str] = (),
                  hint: str = SHRINK_HINT) -> ChannelGraph:
    """The removable groups of `model` and the groups left whole (with why). Groups touching
    a layer in `ignore` are left whole too. ShrinkUnsupported when it cannot be traced."""
    modules = dict(model.named_modules())
    for name in ignore:
        if name not in modules:
            raise UserError(f"no layer named {name!r} in {type(model).__name__}")
    try:
        graph = analyse(model, _on_device(model, example), hint)
    except GraphUnsupported as e:
        raise ShrinkUnsupported(str(e)) from None
    if ignore:
        kept = []
        for g in graph.groups:
            hit = next((n for n in ignore if any(m.param.startswith(f"{n}.") for m in g.members)),
                       None)
            if hit is None:
                kept.append(g)
            else:
                graph.whole[g.name] = f"{hit!r} is kept dense"
        graph.groups = kept
    return graph


def channel_groups(model: nn.Module, example: torch.Tensor, ignore: Sequence[str] = (),
                   hint: str = SHRINK_HINT) -> list[Group]:
    """The removable channel (and head) groups of `model`, in module order."""
    return channel_graph(model, example, ignore, hint).groups


def groups_by_name(groups: Sequence[Group]) -> dict[str, Group]:
    """Groups by their name and by the name of each of their layers."""
    out = {}
    for g in groups:
        out.update({layer: g for layer in g.layers})
        out[g.name] = g
    return out


def _channel_list(idx, g: Group) -> list[int]:
    chans = [int(i) for i in (idx.flatten().tolist() if torch.is_tensor(idx) else idx)]
    bad = [i for i in chans if not 0 <= i < g.size]
    if bad:
        raise UserError(f"channel {bad[0]} is out of range for group {g.name!r} "
                        f"({g.size} channels)")
    return chans


def member_mask(m: Member, shape: tuple, units: torch.Tensor) -> torch.Tensor:
    """Boolean mask of a parameter of `shape`: False on every slice of `m` holding one of
    `units`."""
    mask = torch.ones(shape, dtype=torch.bool)
    hit = torch.isin(m.units, units)
    if m.groups == 1:
        mask.index_fill_(m.dim, torch.nonzero(hit).flatten(), False)
        return mask
    per_block = len(m.units) // m.groups
    rows = shape[0] // m.groups
    for p in torch.nonzero(hit).flatten().tolist():  # grouped conv: slot p % per_block of block
        b = p // per_block
        mask[b * rows:(b + 1) * rows, p % per_block] = False
    return mask


def channel_masks(model: nn.Module, example: torch.Tensor,
                  drop: Mapping[str, torch.Tensor | Sequence[int]],
                  groups: Sequence[Group] | None = None,
                  consumers: bool = True) -> dict[str, torch.Tensor]:
    """Boolean masks (True = kept) zeroing every producing parameter slice of the dropped
    units and, with `consumers`, every consumer slice that reads them (what the shrink removes
    with them, so the masks' density and FLOP count are those of the shrunk model).

    `drop` maps a group (its name or any of its layers) to unit indices. Only parameters get
    masks (BatchNorm statistics are buffers). UserError for unknown groups and for a drop that
    would remove every unit of a group.
    """
    groups = channel_groups(model, example) if groups is None else groups
    lookup = groups_by_name(groups)
    chosen: dict[str, set[int]] = {}
    for key, idx in drop.items():
        if key not in lookup:
            known = ", ".join(g.name for g in groups[:6])
            raise UserError(f"no prunable channel group {key!r}; groups: {known}"
                            f"{', ...' if len(groups) > 6 else ''}")
        g = lookup[key]
        chosen.setdefault(g.name, set()).update(_channel_list(idx, g))
    params = dict(model.named_parameters())
    masks: dict[str, torch.Tensor] = {}
    for gname, chans in chosen.items():
        g = lookup[gname]
        if len(chans) >= g.size:
            raise UserError(f"dropping all {g.size} channels of group {g.name!r} would empty "
                            "it; keep at least one")
        sel = torch.tensor(sorted(chans), dtype=torch.long)
        for m in g.members:
            if m.param not in params or (not m.produces and not consumers):
                continue
            p = params[m.param]
            mask = member_mask(m, tuple(p.shape), sel).to(p.device)
            masks[m.param] = masks[m.param] & mask if m.param in masks else mask
    return masks


def _check_masks(model: nn.Module, masks: Mapping[str, torch.Tensor]) -> None:
    params = dict(model.named_parameters())
    for name, m in masks.items():
        if name not in params:
            raise UserError(f"mask for {name!r}, which {type(model).__name__} does not have")
        if tuple(m.shape) != tuple(params[name].shape):
            raise UserError(f"mask for {name} has shape {tuple(m.shape)}, the parameter "
                            f"{tuple(params[name].shape)}")


def _nonzero_positions(m: Member, w: torch.Tensor) -> torch.Tensor:
    """Per position of member `m`: does its slice of `w` hold a non-zero?"""
    nz = (w != 0).cpu()
    if m.groups == 1:
        return nz.movedim(m.dim, 0).reshape(nz.shape[m.dim], -1).any(1)
    per_block, rows = len(m.units) // m.groups, nz.shape[0] // m.groups
    blocks = nz.view(m.groups, rows, per_block, -1).any(3).any(1)  # [block, slot]
    return blocks.reshape(-1)


def _masked(state: Mapping[str, torch.Tensor], masks: Mapping[str, torch.Tensor],
            name: str) -> torch.Tensor:
    w = state[name].detach()
    if name in masks:
        w = torch.where(masks[name].to(w.device, torch.bool), w, torch.zeros_like(w))
    return w


def _mark(flags: torch.Tensor, m: Member, nonzero: torch.Tensor) -> None:
    own = m.units >= 0
    flags[m.units[own & nonzero]] = True


@torch.no_grad()
def alive_units(g: Group, state: Mapping[str, torch.Tensor],
                masks: Mapping[str, torch.Tensor]) -> torch.Tensor:
    """Units of `g` that something produces (a non-zero producing slice after masking, or any
    unit of a group whose zeros may not reach its readers as zeros) AND something reads."""
    produced = torch.zeros(g.size, dtype=torch.bool)
    read = torch.zeros(g.size, dtype=torch.bool)
    readers = False
    for m in g.members:
        if m.param not in state:
            continue
        if m.produces:
            _mark(produced, m, _nonzero_positions(m, _masked(state, masks, m.param)))
        else:
            readers = True
            _mark(read, m, _nonzero_positions(m, _masked(state, masks, m.param)))
    for bname, units in g.zero_buffers.items():
        own = units >= 0
        produced[units[own & (state[bname] != 0).cpu()]] = True
    if not g.zero_flows:
        produced[:] = True
    return produced & read if readers else produced


def _state(model: nn.Module) -> dict[str, torch.Tensor]:
    return {**dict(model.named_parameters()), **dict(model.named_buffers())}


def rounded_width(alive: int, size: int, round_to: int) -> int:
    """Channels to keep: `alive` rounded up to a multiple of `round_to`, at least 1, at most size."""
    return min(size, math.ceil(max(alive, 1) / round_to) * round_to)


def removal(g: Group, dead: torch.Tensor, kept: int) -> list[int]:
    """Which dead units go so that `kept` units stay (the last dead ones; with cells, the same
    share of every cell, which may keep more)."""
    if g.cells is None:
        dead_idx = torch.nonzero(dead).flatten().tolist()
        n = g.size - kept
        return dead_idx[len(dead_idx) - n:] if n > 0 else []
    sizes = torch.bincount(g.cells)
    step = 0
    for s in sizes.tolist():
        step = math.gcd(step, s)
    ratio = sizes // step
    dead_per = torch.bincount(g.cells[dead], minlength=len(sizes))
    x = min(int((dead_per // ratio).min()), (g.size - kept) // int(ratio.sum()))
    x = min(x, step - 1)
    if not x:
        return []
    dead_t = torch.nonzero(dead).flatten()
    cells = g.cells[dead_t]
    out = []
    for c in range(len(sizes)):
        in_cell = dead_t[cells == c]
        out += in_cell[len(in_cell) - x * int(ratio[c]):].tolist()
    return sorted(out)


def _count_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def _masked_copy(model: nn.Module, masks: Mapping[str, torch.Tensor]) -> nn.Module:
    from compress.core.masking import apply_masks
    net = copy.deepcopy(model).eval()
    apply_masks(net, masks)
    return net


@torch.no_grad()
def rel_error(a: nn.Module, b: nn.Module, inputs: Sequence[torch.Tensor]) -> float:
    """Worst max|b - a| / max|a| over `inputs` (inf on a shape change or NaN)."""
    worst = 0.0
    for x in inputs:
        want, got = a(x).double(), b(x).double()
        if got.shape != want.shape:
            return math.inf
        err = float((got - want).abs().max()) / max(float(want.abs().max()), 1e-12)
        if err != err:  # NaN
            return math.inf
        worst = max(worst, err)
    return worst


def _verify(ref: nn.Module, net: nn.Module, graph: ChannelGraph, removed: dict,
            example: torch.Tensor, rtol: float) -> float:
    """Relative error of the shrunk vs the masked model; ShrinkError naming the culprit group."""
    from compress.core.surgery import cut
    gen = torch.Generator().manual_seed(0)
    inputs = [example, torch.randn(example.shape, generator=gen).to(example)]
    err = rel_error(ref, net, inputs)
    if err <= rtol:
        return err
    culprit = "several groups together"
    for name, units in removed.items():  # which single group's surgery breaks it?
        one = copy.deepcopy(ref)
        cut(one, graph, {name: units})
        if not rel_error(ref, one, inputs) <= rtol:
            culprit = f"group {name!r}"
            break
    raise ShrinkError(f"shrinking {culprit} changes the model's output (relative error "
                      f"{err:.3g} > {rtol:g}); {SHRINK_HINT}")


def shrink_channels(model: nn.Module, example: torch.Tensor,
                    masks: Mapping[str, torch.Tensor] | None = None, round_to: int = 8,
                    ignore: Sequence[str] = (), rtol: float = 1e-4,
                    widths=None, strict: bool = False) -> tuple[nn.Module, dict]:
    """A copy of the masked `model` with its dead channels and heads physically removed, and
    its spec.

    The units kept per group are rounded up to a multiple of `round_to` (1 = off) by keeping
    some dead ones: they are zero, so the output is unchanged. `widths(groups, alive, plan)` may
    choose other widths within [alive, size] (compress.core.widths). The result is checked
    against the masked model on `example` and a random input (ShrinkError naming the group
    otherwise). With `strict`, dead units a mask cannot remove exactly are refused.
    """
    from compress.core.structure import count_macs
    from compress.core.surgery import cut

    if int(round_to) < 1:
        raise UserError(f"round_to must be >= 1, got {round_to}")
    masks = dict(masks or {})
    _check_masks(model, masks)
    example = _on_device(model, example)
    ref = _masked_copy(model, masks)
    graph = channel_graph(ref, example, ignore)
    state = _state(ref)
    whole = dict(graph.whole)
    plan, removed = [], {}
    exact = [g for g in graph.groups if g.exact]
    for g in graph.groups:
        if not g.exact:
            whole[g.name] = f"a mask cannot remove them exactly: {g.inexact}"
            if strict and not bool(alive_units(g, state, {}).all()):
                raise ShrinkUnsupported(f"cannot remove the dead channels of {g.name!r}: "
                                        f"{g.inexact}, so removing one changes the others; "
                                        f"{SHRINK_HINT}, or prune it with method.physical")
    alive = {g.name: alive_units(g, state, {}) for g in exact}
    keep = {g.name: rounded_width(int(alive[g.name].sum()), g.size, int(round_to))
            for g in exact}
    live_removed: dict[str, list[int]] = {}
    if widths is not None:
        from compress.core.masking import apply_masks
        from compress.core.widths import live_to_drop
        keep = widths(exact, alive, keep)
        live_removed = live_to_drop(ref, exact, alive, keep)
        if live_removed:  # rounding down: the reference loses those live units too
            apply_masks(ref, channel_masks(ref, example, live_removed, exact))
            state = _state(ref)
            alive = {g.name: alive_units(g, state, {}) for g in exact}
    for g in exact:
        gone = removal(g, ~alive[g.name], keep[g.name])
        plan.append({"group": g.name, "kind": g.kind, "original": g.size,
                     "dead": int((~alive[g.name]).sum()), "kept": g.size - len(gone),
                     "removed": gone})
        if gone:
            removed[g.name] = gone
    net = copy.deepcopy(ref)
    cut(net, graph, removed)
    net.eval()
    err = _verify(ref, net, graph, removed, example, rtol)
    channels = [s for s in plan if s["kind"] == "channels"]
    heads = [s for s in plan if s["kind"] == "heads"]
    spec = {
        "kind": "channels",
        "round_to": int(round_to),
        "groups": plan,
        "left_whole": whole,
        "channels": {"total": sum(s["original"] for s in channels),
                     "dead": sum(s["dead"] for s in channels),
                     "kept": sum(s["kept"] for s in channels)},
        "params": {"dense": _count_params(ref), "shrunk": _count_params(net)},
        "macs": {"dense": count_macs(ref, example[:1]), "shrunk": count_macs(net, example[:1])},
        "verify_rel_error": err,
    }
    if live_removed:
        spec["live_removed"] = live_removed
    if heads:
        spec["heads"] = {"total": sum(s["original"] for s in heads),
                         "kept": sum(s["kept"] for s in heads)}
    return net, spec
