"""Which channels of a model must be removed together: a channel dependency graph from torch.fx.

The model is traced once with torch.fx (leaf modules: torch.nn's own, and attention modules)
and run once on an example to learn every tensor's shape. Every output channel of a layer gets
an id; the ids flow through the graph along the dimension that holds them (a conv's dim 1, a
Linear's last dim) and are merged where two tensors meet (a residual sum, a gate multiplying its
input, a depthwise conv, the halves of a channel shuffle). Each merged class is one removable
unit; the classes that share a layer's output form a group. For every parameter slice that
produces or reads a unit the graph records a `Member`, so masking, scoring and surgery all work
from the same list.

A group is left whole (with the reason) when its channels reach something whose width cannot
change: the model's input or output, an op this module does not understand, a reshape to a
constant width in forward(), a slice of fixed channels. A group is *exact* when zeroing its
units' parameter slices computes the same function as removing them (ReLU-like activations,
sums, gates, pooling, concat); groups whose channels enter a normalisation or reduction across
channels (LayerNorm, softmax or mean over channels) are not: only physical surgery removes them.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field

import torch
from torch import fx, nn

from compress.errors import UserError

# The pass itself (states, op handlers) is compress/core/chflow.py; here: the data it
# produces, tracing, and grouping ids into units and groups.
INPUT = "it is the model's input"
OUTPUT = "it is the model's output"


class GraphUnsupported(UserError):
    """The model cannot be traced or analysed."""


@dataclass
class Member:
    """A parameter (or buffer) whose slices along `dim` produce or read a group's units:
    `units[p]` is the unit at position p (-1: another group's). For a grouped conv's input
    (`groups` > 1) the positions are the conv's input channels; slot p % (in / groups) of the
    filters in block p // (in / groups) reads it."""

    param: str
    dim: int
    units: torch.Tensor
    produces: bool
    groups: int = 1


@dataclass
class Group:
    name: str                       # first producing layer, in module order
    size: int                       # removable units
    members: list[Member]
    layers: list[str]               # conv / linear / attention layers producing the units
    kind: str = "channels"          # or "heads"
    cells: torch.Tensor | None = None    # unit -> cell; each cell keeps the same share
    exact: bool = True              # zeroing its slices == removing its units
    inexact: str | None = None      # why not
    zero_flows: bool = True         # units whose producers are zero stay zero where read
    flat_linear: bool = False       # produced by a Linear on flat vectors (a classifier MLP)
    zero_buffers: dict[str, torch.Tensor] = field(default_factory=dict)  # non-affine BN means

    @property
    def out_params(self) -> dict[str, int]:
        return {m.param: m.dim for m in self.members if m.produces}

    @property
    def in_params(self) -> dict[str, int]:
        return {m.param: m.dim for m in self.members if not m.produces}


@dataclass
class ChannelGraph:
    groups: list[Group]             # removable groups, in module order of their names
    whole: dict[str, str]           # group name -> why it stays whole
    # Every group, whole or not: kind ("channels" / "heads"), units, produced by a Linear on
    # flat vectors (a classifier MLP's hidden units).
    sizes: dict[str, tuple[str, int, bool]] = field(default_factory=dict)


# ---------------------------------------------------------------------------- tracing
class _Tracer(fx.Tracer):
    def is_leaf_module(self, m: nn.Module, qualname: str) -> bool:
        from compress.core.attention import PrunedAttention
        return isinstance(m, PrunedAttention) or super().is_leaf_module(m, qualname)


def trace(model: nn.Module, example: torch.Tensor, hint: str) -> fx.GraphModule:
    """The fx graph of `model`, each node's output shape in node.meta['tensor_meta']."""
    from torch.fx.passes.shape_prop import ShapeProp
    was_training = model.training
    model.eval()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            graph = _Tracer().trace(model)
            gm = fx.GraphModule(model, graph)
            with torch.no_grad():
                ShapeProp(gm).propagate(example[:1])
    except Exception as e:  # tracing fails in many ways; the user needs one line
        lines = str(e).strip().splitlines()
        raise GraphUnsupported(f"cannot trace {type(model).__name__} with torch.fx "
                               f"({type(e).__name__}: {lines[0][:160] if lines else ''}); "
                               f"{hint}") from e
    finally:
        model.train(was_training)
    return gm


# ---------------------------------------------------------------------------- grouping
def _groups(flow, order: dict[str, int]) -> ChannelGraph:
    """Units (classes of ids), groups (spaces sharing any unit), members, cells, reasons."""
    n = len(flow.parent)
    roots = torch.tensor([flow.find(i) for i in range(n)], dtype=torch.long)
    space_of = torch.tensor(flow.space_of, dtype=torch.long)
    # Spaces joined by any union form one group.
    sparent = list(range(len(flow.spaces)))

    def sfind(s: int) -> int:
        while sparent[s] != s:
            sparent[s] = sparent[sparent[s]]
            s = sparent[s]
        return s
    for a, b in zip(space_of.tolist(), space_of[roots].tolist()):
        ra, rb = sfind(a), sfind(b)
        if ra != rb:
            sparent[max(ra, rb)] = min(ra, rb)
    comps: dict[int, list[int]] = {}
    for s in range(len(flow.spaces)):
        comps.setdefault(sfind(s), []).append(s)
    rank = lambda s: (order.get(flow.spaces[s][2], 1 << 30), s)  # noqa: E731
    group_list, unit_list = [-1] * n, [-1] * n
    root_list = roots.tolist()
    protos = []
    for spaces in comps.values():
        layers = sorted({flow.spaces[s][2] for s in spaces if flow.spaces[s][2]},
                        key=lambda name: order.get(name, 1 << 30))
        if not layers:
            continue  # the input alone, or fixed channels nothing produces
        heads = any(flow.spaces[s][3] == "heads" for s in spaces)
        gi = len(protos)
        protos.append({"name": layers[0] + (".heads" if heads else ""), "layers": layers,
                       "kind": "heads" if heads else "channels", "size": 0,
                       "flat": any(s in flow.flat_linear for s in spaces)})
        units: dict[int, int] = {}
        for s in sorted(spaces, key=rank):  # units numbered as the root layer's channels
            base, size = flow.spaces[s][0], flow.spaces[s][1]
            for i in range(base, base + size):
                unit_list[i] = units.setdefault(root_list[i], len(units))
                group_list[i] = gi
        protos[gi]["size"] = len(units)
    group_of = torch.tensor(group_list, dtype=torch.long)
    unit_of = torch.tensor(unit_list, dtype=torch.long)
    whole: dict[int, str] = {}
    for table in (flow.pins,):
        for i, reason in table.items():
            if group_of[i] >= 0:
                whole.setdefault(int(group_of[i]), reason)
    mixes = {int(group_of[i]): r for i, r in sorted(flow.mixes.items(), reverse=True)
             if group_of[i] >= 0}
    nonzero = {int(g) for g in group_of[list(flow.nonzero_reads)].tolist()} \
        if flow.nonzero_reads else set()
    members: dict[int, list[Member]] = {}
    for m in flow.members:
        valid = m.units >= 0
        gids = torch.full_like(m.units, -1)
        gids[valid] = group_of[m.units[valid]]
        for g in torch.unique(gids[gids >= 0]).tolist():
            units = torch.where(gids == g, unit_of[m.units.clamp(min=0)], -1)
            members.setdefault(g, []).append(Member(m.param, m.dim, units, m.produces,
                                                    m.groups))
    cells = _cells(flow, group_of, unit_of, protos, whole)
    graph = ChannelGraph([], {})
    for gi, p in enumerate(protos):
        graph.sizes[p["name"]] = (p["kind"], p["size"], p["flat"])
        if gi in whole:
            graph.whole[p["name"]] = whole[gi]
            continue
        zero_buffers = {b: torch.where(group_of[ids] == gi, unit_of[ids], -1)
                        for b, ids in flow.zero_buffers if bool((group_of[ids] == gi).any())}
        layers = p["layers"] if p["kind"] == "channels" else p["layers"][:1]
        graph.groups.append(Group(
            p["name"], p["size"], members.get(gi, []), layers, p["kind"], cells.get(gi),
            gi not in mixes, mixes.get(gi), gi not in nonzero, p["flat"], zero_buffers))
    graph.groups.sort(key=lambda g: order.get(g.name.removesuffix(".heads"), 1 << 30))
    return graph

def _cells(flow, group_of: torch.Tensor, unit_of: torch.Tensor, protos: list,
            whole: dict[int, str]) -> dict[int, torch.Tensor]:
    """Per group, unit -> cell where grouped convs or chunks need equal kept counts per
    block: units in one cell share their block under every such constraint, and keeping
    the same fraction of every cell keeps every block equal (see `cell_counts`). Groups
    whose constraints cannot be met go to `whole`."""
    cons = list(flow.partitions)
    for chunks, op in flow.balanced:
        cons.append((torch.cat(chunks),
                     torch.cat([torch.full((len(c),), i) for i, c in enumerate(chunks)]), op))
    signatures: dict[int, list[torch.Tensor]] = {}
    for ids, blk, op in cons:
        gids = group_of[ids]
        present = [g for g in torch.unique(gids).tolist() if g >= 0]
        if not present:
            continue
        if len(present) > 1 or bool((gids < 0).any()):
            for g in present:
                whole.setdefault(g, f"{op} mixes them with other channels")
            continue
        g = present[0]
        units = unit_of[ids]
        n_blocks = int(blk.max()) + 1
        count = torch.zeros(protos[g]["size"], n_blocks, dtype=torch.long)
        count.index_put_((units, blk), torch.ones_like(units), accumulate=True)
        count = count[count.sum(1) > 0]  # units this op does not touch are free of it
        if bool((count == count[:1]).all()):
            continue  # every unit spans the blocks alike: any removal keeps them equal
        hits = torch.zeros(protos[g]["size"], n_blocks, dtype=torch.long)
        hits.index_put_((units, blk), torch.ones_like(units), accumulate=True)
        touched = hits.sum(1) > 0
        if not bool(((hits[touched] > 0).sum(1) == 1).all()):
            whole.setdefault(g, f"{op} splits them unevenly")
            continue
        block = torch.where(touched, hits.argmax(1), -1)
        per = torch.bincount(block[touched], minlength=n_blocks)
        if not bool((per == per[0]).all()):
            whole.setdefault(g, f"{op} splits them unevenly")
        elif per[0] == 1:
            whole.setdefault(g, f"{op} gives each of them a block of its own")
        else:
            signatures.setdefault(g, []).append(block)
    cells = {}
    for g, blocks in signatures.items():
        sig = torch.stack(blocks, 1)
        cells[g] = torch.unique(sig, dim=0, return_inverse=True)[1]
    return cells


def cell_counts(cells: torch.Tensor, keep: float) -> torch.Tensor:
    """Units to keep per cell at fraction `keep`: the same share x/g of every cell, where g is
    the gcd of the cell sizes, so every block of every constraint keeps the same count."""
    import math
    sizes = torch.bincount(cells)
    g = 0
    for s in sizes.tolist():
        g = math.gcd(g, s)
    x = min(g, max(1, int(keep * g + 0.5)))
    return sizes // g * x


def _same_partition(a: torch.Tensor, b: torch.Tensor) -> bool:
    pairs = set(zip(a.tolist(), b.tolist()))
    return len(pairs) == len(set(a.tolist())) == len(set(b.tolist()))


def analyse(model: nn.Module, example: torch.Tensor, hint: str) -> ChannelGraph:
    """The removable channel groups of `model` (and heads of its attention layers), and the
    groups left whole with the reason. GraphUnsupported when it cannot be traced."""
    gm = trace(model, example, hint)
    from compress.core.chflow import Flow
    flow = Flow(model, gm)
    flow.run()
    order = {n: i for i, n in enumerate(dict(model.named_modules()))}
    return _groups(flow, order)

