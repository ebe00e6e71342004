"""Channel groups of a CNN, channel masks, dead channels, and the structural shrink.

Torch-Pruning's DependencyGraph says which channels are coupled: a conv's output channel, its
BatchNorm, every conv added to it in a residual sum, the depthwise conv that reads it and the
input slice of every consumer (including the classifier after a flatten) must go together.
This module decides WHICH channels go - only those whose output is provably zero - and checks
the result; Torch-Pruning only does the surgery.

A channel is dead when removing it cannot change the output, for one of two reasons:
- nothing produces it: every parameter slice that produces it (conv/linear filter and bias,
  BatchNorm gamma and beta, depthwise filter) is exactly zero in every coupled layer, and each
  non-affine BatchNorm in the group has running mean 0 there. In eval mode it is then exactly
  0, and every op on its path (ReLU-like activations, sums, pooling, concat) keeps it 0;
- nothing reads it: every consumer's weight slice that reads it (the next conv's input
  channel, the classifier's columns after a flatten) is exactly zero. Whatever its value, it
  adds nothing (e.g. a unit whose outgoing weights were all pruned, whose bias is alive).
Groups whose channels pass through anything else (sigmoid, channel shuffles, grouped convs,
the model's output) are left whole.

torch_pruning is imported inside the functions: importing this module stays cheap.
"""

from __future__ import annotations

import copy
import math
import warnings
from dataclasses import dataclass, field
from typing import Iterable, Mapping, Sequence

import torch
from torch import nn

from compress.errors import UserError

SHRINK_HINT = "export with masks only (--set export.shrink=false)"

# Modules whose parameters/behaviour the dead-channel rule understands: zero in, zero out.
_LAYERS = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear, nn.BatchNorm1d, nn.BatchNorm2d,
           nn.BatchNorm3d)
_ZERO_PRESERVING = (nn.ReLU, nn.ReLU6, nn.LeakyReLU, nn.SiLU, nn.GELU, nn.Hardswish, nn.Tanh,
                    nn.ELU, nn.Mish, nn.Hardtanh, nn.Identity, nn.Flatten, nn.Dropout,
                    nn.Dropout1d, nn.Dropout2d, nn.Dropout3d, nn.MaxPool1d, nn.MaxPool2d,
                    nn.MaxPool3d, nn.AvgPool1d, nn.AvgPool2d, nn.AvgPool3d, nn.AdaptiveAvgPool1d,
                    nn.AdaptiveAvgPool2d, nn.AdaptiveAvgPool3d, nn.AdaptiveMaxPool1d,
                    nn.AdaptiveMaxPool2d, nn.AdaptiveMaxPool3d)
# Autograd ops a dead (all-zero) channel may pass through and stay all zero, per channel.
_SAFE_OPS = frozenset(
    f"{op}Backward0" for op in (
        "Relu", "Hardtanh", "LeakyRelu", "Silu", "Gelu", "Hardswish", "Tanh", "Elu", "Mish",
        "Add", "Mul", "MaxPool2DWithIndices", "MaxPool3DWithIndices", "AvgPool2D", "AvgPool3D",
        "AdaptiveAvgPool2D", "AdaptiveAvgPool3D", "AdaptiveMaxPool2D", "AdaptiveMaxPool3D",
        "T", "Clone", "Squeeze", "Unsqueeze")
) | {"SqueezeBackward1", "UnsqueezeBackward1", "SqueezeBackward2"}


class ShrinkError(UserError):
    """The shrunk model differs from the masked model (a bug, never expected)."""


class ShrinkUnsupported(ShrinkError):
    """The model has a layer or op the channel shrink does not handle."""


@dataclass
class ChannelGroup:
    """Channels that can only be removed together, indexed as the output channels of `name`.

    `out_params` maps every parameter whose slices along that dim PRODUCE the group's channels to
    the dim; `index[param]` gives, for each channel 0..size-1, its slice along that dim (-1: this
    parameter has none): the identity except after a concat. `in_params` maps the consumers'
    weights whose slices READ the channels to that dim, and `in_index[param]` gives the channel
    each slice reads (-1: another group's), several slices per channel after a flatten. `layers`
    are the conv/linear modules whose outputs are in the group.
    """

    name: str
    size: int
    out_params: dict[str, int]
    in_params: dict[str, int]
    layers: list[str]
    index: dict[str, torch.Tensor] = field(repr=False)
    in_index: dict[str, torch.Tensor] = field(default_factory=dict, repr=False)
    # Running means of non-affine BatchNorms: a channel is only dead where they are 0.
    zero_buffers: dict[str, torch.Tensor] = field(default_factory=dict, repr=False)


def _one_line(exc: BaseException) -> str:
    lines = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {lines[0] if lines else ''}"[:200]


def check_supported(model: nn.Module, hint: str = SHRINK_HINT) -> None:
    """ShrinkUnsupported naming the first module the dead-channel rule does not cover; `hint`
    says what the user can do instead."""
    for name, mod in model.named_modules():
        own_state = any(True for _ in mod.parameters(recurse=False))
        container = isinstance(mod, (nn.Sequential, nn.ModuleList, nn.ModuleDict))
        leaf = not any(True for _ in mod.children()) and not container
        if (leaf or own_state) and not isinstance(mod, _LAYERS + _ZERO_PRESERVING):
            what = "module" if mod is model else f"layer {name!r}"
            raise ShrinkUnsupported(f"cannot shrink {what} ({type(mod).__name__}): channel shrink "
                              "handles Conv/Linear/BatchNorm nets with ReLU-like activations, "
                              f"pooling, sums and concats; {hint}")
        if isinstance(mod, nn.modules.conv._ConvTransposeNd):
            raise ShrinkUnsupported(f"cannot shrink layer {name!r} ({type(mod).__name__}); "
                                    f"{hint}")


def _trace(model: nn.Module, example: torch.Tensor, hint: str = SHRINK_HINT):
    """Torch-Pruning's dependency graph of `model` and the autograd nodes of its outputs."""
    import torch_pruning as tp

    outputs: list = []

    def forward(module: nn.Module, x: torch.Tensor):
        outputs.append(module(x))
        return outputs[-1]

    was_training = model.training
    try:
        with torch.enable_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            graph = tp.DependencyGraph().build_dependency(
                model, example_inputs=example[:1], forward_fn=forward, verbose=False)
    except Exception as e:  # tracing internals fail in many ways; the user needs one line
        raise ShrinkUnsupported(f"cannot trace the channels of {type(model).__name__} with "
                          f"Torch-Pruning ({_one_line(e)}); {hint}") from e
    finally:
        model.train(was_training)
    flat = outputs[0] if isinstance(outputs[0], (tuple, list)) else [outputs[0]]
    return graph, [t.grad_fn for t in flat if torch.is_tensor(t)]


def _safe_op(grad_fn) -> bool:
    name = type(grad_fn).__name__ if grad_fn is not None else "None"
    if name.startswith("MeanBackward"):  # a mean over spatial dims only; never over channels
        dims = getattr(grad_fn, "_saved_dim", None)
        ndim = len(getattr(grad_fn, "_saved_self_sym_sizes", ()))
        return dims is not None and ndim >= 3 and all(d % ndim >= 2 for d in dims)
    return name in _SAFE_OPS


def _slices(pairs: Iterable[tuple[int, int]], size: int) -> torch.Tensor | None:
    """Slice of each group channel (-1 where none); None unless channel -> slice is one-to-one."""
    index = torch.full((size,), -1, dtype=torch.long)
    seen: set[int] = set()
    for idx, root in pairs:
        if index[root] not in (-1, idx) or (index[root] == -1 and idx in seen):
            return None
        index[root] = idx
        seen.add(idx)
    return index


def _describe(group, graph, names: dict, outputs: list, order: dict) -> ChannelGroup | str:
    """A ChannelGroup, or why the group must stay whole."""
    from torch_pruning import ops

    size = len(group[0].idxs)
    out_p, in_p, index, in_index, zero_buf, layers = {}, {}, {}, {}, {}, []
    for item in group:
        node, mod = item.dep.target, item.dep.target.module
        produces = graph.is_out_channel_pruning_fn(item.dep.handler)
        if node.type == ops.OPTYPE.OUTPUT or (produces and any(node.grad_fn is o for o in outputs)):
            return "it is the model's output"
        if node.type == ops.OPTYPE.ELEMENTWISE:
            if not _safe_op(node.grad_fn):
                return f"its channels pass through {type(node.grad_fn).__name__}"
            continue
        if node.type in (ops.OPTYPE.CONCAT, ops.OPTYPE.SPLIT, ops.OPTYPE.RESHAPE, ops.OPTYPE.SLICE):
            continue
        if not isinstance(mod, _LAYERS) or mod not in names:
            return f"its channels pass through {type(mod).__name__}"
        lname = names[mod]
        depthwise = node.type == ops.OPTYPE.DEPTHWISE_CONV
        if getattr(mod, "groups", 1) > 1 and not depthwise:
            return f"{lname} is a grouped convolution"
        if produces:
            slices = _slices(zip(item.idxs, item.root_idxs), size)
            if slices is None:
                return f"{lname} produces its channels more than once"
            for pname, _ in mod.named_parameters(recurse=False):
                out_p[f"{lname}.{pname}"], index[f"{lname}.{pname}"] = 0, slices
        elif getattr(mod, "weight", None) is not None:
            reads = torch.full((mod.weight.shape[1],), -1, dtype=torch.long)
            reads[torch.tensor(item.idxs, dtype=torch.long)] = torch.tensor(item.root_idxs)
            in_p[f"{lname}.weight"], in_index[f"{lname}.weight"] = 1, reads
        if produces and isinstance(mod, nn.modules.batchnorm._BatchNorm) and not mod.affine \
                and mod.running_mean is not None:
            zero_buf[f"{lname}.running_mean"] = slices
        if produces and not isinstance(mod, nn.modules.batchnorm._BatchNorm):
            layers.append(lname)
    layers.sort(key=order.__getitem__)
    return ChannelGroup(layers[0], size, out_p, in_p, layers, index, in_index, zero_buf)


def _module(model: nn.Module, name: str) -> nn.Module:
    modules = dict(model.named_modules())
    if name not in modules:
        raise UserError(f"no layer named {name!r} in {type(model).__name__}")
    return modules[name]


def _analyse(model: nn.Module, graph, outputs: list, ignore: Sequence[str]
             ) -> tuple[list[ChannelGroup], dict[str, str]]:
    """Prunable groups (rooted at their first layer), and the groups left whole with why."""
    names = {m: n for n, m in model.named_modules()}
    order = {n: i for i, n in enumerate(names.values())}
    ignored = [_module(model, n) for n in ignore]
    groups, whole = [], {}
    for found in graph.get_all_groups(ignored_layers=ignored):
        root = names.get(found[0].dep.target.module, "?")
        desc = _describe(found, graph, names, outputs, order)
        if isinstance(desc, ChannelGroup) and desc.name != root:
            # Re-root at the group's first layer so channel i means that layer's channel i.
            mod = _module(model, desc.name)
            fn = graph.get_pruner_of_module(mod).prune_out_channels
            desc = _describe(graph.get_pruning_group(mod, fn, list(range(_out_width(mod)))),
                             graph, names, outputs, order)
        if isinstance(desc, str):
            whole[root] = desc
        else:
            groups.append(desc)
    groups.sort(key=lambda g: order[g.name])
    return groups, whole


def _out_width(mod: nn.Module) -> int:
    return mod.out_features if isinstance(mod, nn.Linear) else mod.out_channels


def channel_groups(model: nn.Module, example: torch.Tensor, ignore: Sequence[str] = (),
                   hint: str = SHRINK_HINT) -> list[ChannelGroup]:
    """The prunable coupled channel groups of `model`, in module order.

    Groups touching a layer in `ignore`, the model's output, a grouped convolution or an op that
    does not keep a zero channel zero are left out. ShrinkUnsupported for unsupported modules.
    """
    check_supported(model, hint)
    graph, outputs = _trace(model, _on_device(model, example), hint)
    return _analyse(model, graph, outputs, ignore)[0]


def _on_device(model: nn.Module, example: torch.Tensor) -> torch.Tensor:
    param = next(iter(model.parameters()), None)
    return example.to(param.device) if param is not None else example


def groups_by_name(groups: Sequence[ChannelGroup]) -> dict[str, ChannelGroup]:
    """Groups by their name and by the name of each of their layers."""
    out = {}
    for g in groups:
        out.update({layer: g for layer in g.layers})
        out[g.name] = g
    return out


def _channel_list(idx, g: ChannelGroup) -> list[int]:
    chans = [int(i) for i in (idx.flatten().tolist() if torch.is_tensor(idx) else idx)]
    bad = [i for i in chans if not 0 <= i < g.size]
    if bad:
        raise UserError(f"channel {bad[0]} is out of range for group {g.name!r} "
                        f"({g.size} channels)")
    return chans


def channel_masks(model: nn.Module, example: torch.Tensor,
                  drop: Mapping[str, torch.Tensor | Sequence[int]],
                  groups: Sequence[ChannelGroup] | None = None,
                  consumers: bool = True) -> dict[str, torch.Tensor]:
    """Boolean masks (True = kept) zeroing every producing slice of the dropped channels and,
    with `consumers`, every consumer slice that reads them (what the shrink removes with them,
    so the masks' density and FLOP count are those of the shrunk model).

    `drop` maps a group (its name or any of its layers) to channel indices. Only the params of
    the named groups get masks. UserError for unknown groups and for a drop that would remove
    every channel of a group.
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
        for pname, dim in g.out_params.items():
            mask = masks.setdefault(pname, torch.ones_like(params[pname], dtype=torch.bool))
            pos = g.index[pname][sel]
            mask.index_fill_(dim, pos[pos >= 0].to(mask.device), False)
        for pname, dim in (g.in_params.items() if consumers else ()):
            mask = masks.setdefault(pname, torch.ones_like(params[pname], dtype=torch.bool))
            pos = torch.nonzero(torch.isin(g.in_index[pname], sel)).flatten()
            mask.index_fill_(dim, pos.to(mask.device), False)
    return masks


def _check_masks(model: nn.Module, masks: Mapping[str, torch.Tensor]) -> None:
    params = dict(model.named_parameters())
    for name, m in masks.items():
        if name not in params:
            raise UserError(f"mask for {name!r}, which {type(model).__name__} does not have")
        if tuple(m.shape) != tuple(params[name].shape):
            raise UserError(f"mask for {name} has shape {tuple(m.shape)}, the parameter "
                            f"{tuple(params[name].shape)}")


def _nonzero_slices(state: Mapping[str, torch.Tensor], masks: Mapping[str, torch.Tensor],
                    pname: str, dim: int) -> torch.Tensor:
    """Per slice of parameter `pname` along `dim`: does it hold a non-zero (after masking)?"""
    w = state[pname].detach()
    if pname in masks:
        w = torch.where(masks[pname].to(w.device, torch.bool), w, torch.zeros_like(w))
    return (w != 0).movedim(dim, 0).reshape(w.shape[dim], -1).any(1).cpu()


@torch.no_grad()
def _alive(g: ChannelGroup, state: Mapping[str, torch.Tensor],
           masks: Mapping[str, torch.Tensor]) -> torch.Tensor:
    """Channels of `g` that something produces (a non-zero producing slice after masking) AND
    something reads (a non-zero consumer slice; a group without consumers counts as read)."""
    produced = torch.zeros(g.size, dtype=torch.bool)
    for pname, dim in g.out_params.items():
        _mark(produced, g.index[pname], _nonzero_slices(state, masks, pname, dim))
    for bname, slices in g.zero_buffers.items():
        _mark(produced, slices, (state[bname] != 0).cpu())
    if not g.in_params:
        return produced
    read = torch.zeros(g.size, dtype=torch.bool)
    for pname, dim in g.in_params.items():
        chans = g.in_index[pname]
        hit = chans[(chans >= 0) & _nonzero_slices(state, masks, pname, dim)]
        read[hit] = True
    return produced & read


def _mark(alive: torch.Tensor, slices: torch.Tensor, nonzero: torch.Tensor) -> None:
    has = slices >= 0
    alive[has] |= nonzero[slices[has]]


def _state(model: nn.Module) -> dict[str, torch.Tensor]:
    return {**dict(model.named_parameters()), **dict(model.named_buffers())}


def dead_channels(model: nn.Module, example: torch.Tensor,
                  masks: Mapping[str, torch.Tensor] | None = None,
                  groups: Sequence[ChannelGroup] | None = None) -> dict[str, list[int]]:
    """Per prunable group, the channels whose output is provably zero (after `masks`)."""
    masks = dict(masks or {})
    _check_masks(model, masks)
    groups = channel_groups(model, example) if groups is None else groups
    state = _state(model)
    return {g.name: torch.nonzero(~_alive(g, state, masks)).flatten().tolist() for g in groups}


def rounded_width(alive: int, size: int, round_to: int) -> int:
    """Channels to keep: `alive` rounded up to a multiple of `round_to`, at least 1, at most size."""
    return min(size, math.ceil(max(alive, 1) / round_to) * round_to)


def _count_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def _masked_copy(model: nn.Module, masks: Mapping[str, torch.Tensor]) -> nn.Module:
    from compress.core.masking import apply_masks

    net = copy.deepcopy(model).eval()
    apply_masks(net, masks)
    return net


def _removal_plan(groups: Sequence[ChannelGroup], state, round_to: int) -> list[dict]:
    """Per group: which dead channels to remove; the extra dead ones kept only for rounding."""
    plan = []
    for g in groups:
        dead = torch.nonzero(~_alive(g, state, {})).flatten().tolist()
        keep = rounded_width(g.size - len(dead), g.size, round_to)
        removed = dead[len(dead) - (g.size - keep):] if keep < g.size else []
        plan.append({"group": g.name, "original": g.size, "dead": len(dead), "kept": keep,
                     "removed": removed})
    return plan


def _prune(net: nn.Module, example: torch.Tensor, plan: Sequence[dict]) -> None:
    """Torch-Pruning surgery on `net`: remove each planned group's channels, in place."""
    graph, _ = _trace(net, example)
    for step in plan:
        if step["removed"]:
            mod = _module(net, step["group"])
            fn = graph.get_pruner_of_module(mod).prune_out_channels
            graph.get_pruning_group(mod, fn, step["removed"]).prune()


@torch.no_grad()
def _rel_error(a: nn.Module, b: nn.Module, inputs: Sequence[torch.Tensor]) -> float:
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


def _verify(ref: nn.Module, net: nn.Module, example: torch.Tensor, plan: Sequence[dict],
            rtol: float) -> float:
    """Relative error of the shrunk vs the masked model; ShrinkError naming the culprit group."""
    gen = torch.Generator().manual_seed(0)
    inputs = [example, torch.randn(example.shape, generator=gen).to(example)]
    err = _rel_error(ref, net, inputs)
    if err <= rtol:
        return err
    culprit = "several groups together"
    for step in plan:  # which single group's surgery breaks it?
        if step["removed"]:
            one = copy.deepcopy(ref)
            _prune(one, example, [step])
            if not _rel_error(ref, one, inputs) <= rtol:
                culprit = f"group {step['group']!r}"
                break
    raise ShrinkError(f"shrinking {culprit} changes the model's output (relative error "
                      f"{err:.3g} > {rtol:g}); {SHRINK_HINT}")


def shrink_cnn(model: nn.Module, example: torch.Tensor,
               masks: Mapping[str, torch.Tensor] | None = None, round_to: int = 8,
               ignore: Sequence[str] = (), rtol: float = 1e-4) -> tuple[nn.Module, dict]:
    """A copy of the masked `model` with its dead channels physically removed, and its spec.

    The channels kept per group are rounded up to a multiple of `round_to` (1 = off) by keeping
    some dead ones: they are zero, so the output is unchanged. The result is checked against
    the masked model on `example` and a random input (ShrinkError naming the group otherwise).
    """
    from compress.core.structure import count_macs

    if int(round_to) < 1:
        raise UserError(f"round_to must be >= 1, got {round_to}")
    masks = dict(masks or {})
    _check_masks(model, masks)
    check_supported(model)
    example = _on_device(model, example)
    ref = _masked_copy(model, masks)
    graph, outputs = _trace(ref, example)
    groups, whole = _analyse(ref, graph, outputs, ignore)
    plan = _removal_plan(groups, _state(ref), int(round_to))
    net = copy.deepcopy(ref)
    _prune(net, example, plan)
    net.eval()
    err = _verify(ref, net, example, plan, rtol)
    spec = {
        "kind": "cnn",
        "round_to": int(round_to),
        "groups": plan,
        "left_whole": whole,
        "channels": {"total": sum(s["original"] for s in plan),
                     "dead": sum(s["dead"] for s in plan),
                     "kept": sum(s["kept"] for s in plan)},
        "params": {"dense": _count_params(ref), "shrunk": _count_params(net)},
        "macs": {"dense": count_macs(ref, example[:1]), "shrunk": count_macs(net, example[:1])},
        "verify_rel_error": err,
    }
    return net, spec
