"""Physical removal of channels and attention heads, and the spec that replays it.

`cut` removes units of channel groups (compress.core.chgraph) in place: every member slice
goes, and each module's widths (in/out channels, features, num_features, normalized_shape,
groups of a depthwise conv) follow its new parameters; an nn.MultiheadAttention whose widths
changed becomes a PrunedAttention. The model keeps its classes and parameter names, so its
state dict loads into a model rebuilt the same way.

The architecture spec of a surgered model is a JSON-serialisable list of steps, each naming
the groups it cut with the units they kept:

    {"steps": [{"groups": {"layer1.0.conv1": {"size": 64, "kept": [0, 3, ...]}, ...}}]}

`apply(model, spec, example)` rebuilds the smaller model from the configured base model: it
analyses the model, cuts each step's groups, and analyses again for the next step. Group names
and unit numbers come from the deterministic analysis, so the same base model and spec always
give the same module, and the stage's weights.safetensors loads into it.
"""

from __future__ import annotations

from typing import Callable, Mapping, Sequence

import torch
from torch import nn

from compress.core.chgraph import ChannelGraph, Group, Member, analyse
from compress.errors import UserError

SPEC_FORMAT = 1
Slicer = Callable[[Mapping[str, torch.Tensor]], dict[str, torch.Tensor]]


def _keep_positions(m: Member, removed: torch.Tensor) -> torch.Tensor:
    """Positions of member `m` that survive removing units `removed` (bool per position)."""
    return ~torch.isin(m.units, removed) | (m.units < 0)


Cuts = dict[tuple[int, int], torch.Tensor]  # (dim, conv groups) -> positions kept


def _slices(groups: Sequence[Group], removed: Mapping[str, Sequence[int]]
            ) -> dict[str, Cuts]:
    """Per parameter and dim, the positions that survive (every group's cut on that dim
    combined: a conv reading a concat loses positions of several groups)."""
    out: dict[str, Cuts] = {}
    by_name = {g.name: g for g in groups}
    for name, units in removed.items():
        gone = torch.as_tensor(sorted(set(int(u) for u in units)), dtype=torch.long)
        if not len(gone):
            continue
        for m in by_name[name].members:
            keep = _keep_positions(m, gone)
            if not bool(keep.all()):
                cuts = out.setdefault(m.param, {})
                key = (m.dim, m.groups)
                cuts[key] = cuts[key] & keep if key in cuts else keep
    return out


def _slice_tensor(t: torch.Tensor, cuts: Cuts) -> torch.Tensor:
    """`t` with every cut applied: plain dims first, then grouped-conv inputs per block."""
    for (dim, groups), keep in sorted(cuts.items(), key=lambda c: c[0][1] > 1):
        if groups == 1:
            t = t.index_select(dim, torch.nonzero(keep).flatten().to(t.device))
        else:  # a grouped conv's input: filters of block b keep their own slots
            per_block = len(keep) // groups
            kept = keep.view(groups, per_block)
            n = int(kept[0].sum())
            if not bool((kept.sum(1) == n).all()):
                raise UserError(f"cannot cut a grouped convolution: its {groups} groups would "
                                "keep different numbers of input channels")
            slots = torch.stack([torch.nonzero(k).flatten() for k in kept]).to(t.device)
            blocks = t.view(groups, t.shape[0] // groups, *t.shape[1:])
            idx = slots.view(groups, 1, n, *([1] * (t.dim() - 2))).expand(
                groups, blocks.shape[1], n, *t.shape[2:])
            t = torch.gather(blocks, 2, idx).reshape(t.shape[0], n, *t.shape[2:])
    return t


def _owner(model: nn.Module, name: str) -> tuple[nn.Module, str]:
    mod_name, _, leaf = name.rpartition(".")
    return (model.get_submodule(mod_name) if mod_name else model), leaf


@torch.no_grad()
def cut(model: nn.Module, graph: ChannelGraph, removed: Mapping[str, Sequence[int]]) -> Slicer:
    """Remove units `removed[group]` of `model` in place; returns a function that slices any
    {parameter name: tensor of that parameter's old shape} the same way (masks, states)."""
    groups = {g.name: g for g in graph.groups}
    for name, units in removed.items():
        if name not in groups:
            raise UserError(f"no removable group {name!r} in {type(model).__name__}")
        g = groups[name]
        bad = [u for u in units if not 0 <= int(u) < g.size]
        if bad:
            raise UserError(f"unit {bad[0]} is out of range for group {name!r} ({g.size} units)")
        if len(set(int(u) for u in units)) >= g.size:
            raise UserError(f"removing all {g.size} units of group {name!r} would empty it")
        if g.cells is not None and not _cells_even(g.cells, units):
            raise UserError(f"group {name!r} must lose the same share of every channel block "
                            "(grouped convolution or chunk)")
    plan = _slices(list(groups.values()), removed)
    touched: set[str] = set()
    for pname, cuts in plan.items():
        owner, leaf = _owner(model, pname)
        old = getattr(owner, leaf)
        new = _slice_tensor(old.detach(), cuts).contiguous()
        if isinstance(old, nn.Parameter):
            setattr(owner, leaf, nn.Parameter(new, requires_grad=old.requires_grad))
        else:
            owner._buffers[leaf] = new
        touched.add(pname.rpartition(".")[0])
    _fix_modules(model, touched)

    def slicer(tensors: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        return {n: (_slice_tensor(t, plan[n]) if n in plan else t) for n, t in tensors.items()}
    return slicer


def _cells_even(cells: torch.Tensor, removed: Sequence[int]) -> bool:
    sizes = torch.bincount(cells)
    gone = torch.bincount(cells[torch.as_tensor(list(removed), dtype=torch.long)],
                          minlength=len(sizes)) if len(removed) else torch.zeros_like(sizes)
    kept = sizes - gone
    return bool((kept * sizes[0] == sizes * kept[0]).all())


def _fix_modules(model: nn.Module, touched: set[str]) -> None:
    """Each touched module's width attributes from its (new) parameters."""
    from compress.core.attention import PrunedAttention
    for name in sorted(touched, key=len, reverse=True):
        if name.endswith(".out_proj"):  # the attention owning it is fixed below
            touched.add(name.rpartition(".")[0])
    for name in sorted(touched):
        mod = model.get_submodule(name) if name else model
        if isinstance(mod, nn.modules.conv._ConvNd):
            depthwise = mod.groups > 1 and mod.groups == mod.in_channels == mod.out_channels
            mod.out_channels = mod.weight.shape[0]
            if depthwise:
                mod.groups = mod.out_channels
            mod.in_channels = mod.weight.shape[1] * mod.groups
        elif isinstance(mod, nn.Linear):
            mod.out_features, mod.in_features = mod.weight.shape
        elif isinstance(mod, nn.modules.batchnorm._BatchNorm):
            ref = mod.weight if mod.weight is not None else mod.running_mean
            mod.num_features = ref.shape[0]
        elif isinstance(mod, nn.LayerNorm) and mod.weight is not None:
            mod.normalized_shape = (mod.weight.shape[0],)
        elif isinstance(mod, (nn.MultiheadAttention, PrunedAttention)):
            _replace(model, name, _as_pruned_attention(mod))


def _as_pruned_attention(mod: nn.Module) -> nn.Module:
    from compress.core.attention import PrunedAttention
    new = PrunedAttention.like(mod)
    new.in_proj_weight = nn.Parameter(mod.in_proj_weight.detach().clone())
    if mod.in_proj_bias is not None:
        new.in_proj_bias = nn.Parameter(mod.in_proj_bias.detach().clone())
    new.out_proj.weight = nn.Parameter(mod.out_proj.weight.detach().clone())
    if mod.out_proj.bias is not None:
        new.out_proj.bias = nn.Parameter(mod.out_proj.bias.detach().clone())
    new.out_proj.in_features = new.out_proj.weight.shape[1]
    new.out_proj.out_features = new.out_proj.weight.shape[0]
    return new.train(mod.training)


def _replace(model: nn.Module, name: str, new: nn.Module) -> None:
    parent, leaf = _owner(model, name)
    setattr(parent, leaf, new)


# ---------------------------------------------------------------------------- specs
def step(graph: ChannelGraph, removed: Mapping[str, Sequence[int]]) -> dict:
    """The spec step of removing `removed` from the analysed model: per group, units kept."""
    sizes = {g.name: g.size for g in graph.groups}
    out = {}
    for name, units in sorted(removed.items()):
        gone = set(int(u) for u in units)
        if gone:
            out[name] = {"size": sizes[name], "kept": [u for u in range(sizes[name])
                                                      if u not in gone]}
    return {"groups": out}


def compose(spec: dict | None, new_step: dict) -> dict:
    """`spec` followed by one more step (a surgered model pruned again)."""
    steps = list((spec or {}).get("steps", []))
    return {"format": SPEC_FORMAT, "steps": steps + [new_step]}


def apply(model: nn.Module, spec: dict | None, example: torch.Tensor,
          hint: str = "re-run the prune stage") -> nn.Module:
    """`model` (the configured base model) with every step of `spec` cut, in place."""
    if not spec:
        return model
    if spec.get("format") != SPEC_FORMAT:
        raise UserError(f"unknown architecture spec format {spec.get('format')!r}; {hint}")
    for i, st in enumerate(spec["steps"]):
        graph = analyse(model, example, hint)
        groups = {g.name: g for g in graph.groups}
        removed = {}
        for name, entry in st["groups"].items():
            g = groups.get(name)
            if g is None or g.size != entry["size"]:
                what = "no removable group" if g is None else f"a group of {g.size} units, not " \
                    f"{entry['size']},"
                raise UserError(f"architecture spec step {i + 1} names {name!r}, but the "
                                f"configured model has {what} there; keep model.* as in the "
                                "run that pruned it")
            kept = set(entry["kept"])
            removed[name] = [u for u in range(g.size) if u not in kept]
        cut(model, graph, removed)
    return model
