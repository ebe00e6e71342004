"""Structural shrink: turn a masked MLP into a physically smaller MLP computing the same function.

Pruning leaves zeros in dense matrices; here whole hidden units and input features that no
longer matter are cut out, so the exported network is smaller and faster, not just sparse.

A hidden unit goes when
  * its outgoing column in the next layer is all zero (nothing reads it), or
  * its incoming row is all zero: it outputs the constant relu(b_j), which is folded into the
    next layer's bias (b_next += W_next[:, j] * relu(b_j)).
Each removal can starve a neighbouring layer, so both rules run to a fixed point. The counts
(live connections; kept, constant and dead units) come from compress.core.live's reachability
on the same masked weights, so they do not depend on the order the fixed point removed things. Input features
nothing reads are dropped by an index_select in the shrunk module's forward (a Gather in ONNX).
A weight counts as pruned when its mask is False or, without masks, when it is exactly 0.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping

import torch
from torch import nn

from compress.core.hooks import observe
from compress.core.live import live_connections, unit_states
from compress.errors import UserError

SHRINK_HINT = "export with masks only (--set export.shrink=false)"


def is_mlp(model: nn.Module) -> bool:
    """A module declaring the MLP contract (`shrink_kind = "mlp"`: flatten, then `layers` with
    ReLU between them), with that class's own forward (a subclass may not change it)."""
    cls = type(model)
    declaring = next((c for c in cls.__mro__ if c.__dict__.get("shrink_kind") == "mlp"), None)
    return declaring is not None and cls.forward is declaring.forward


@dataclass
class _Plan:
    """Result of the fixed-point analysis: what survives, and the float64 weights to build from."""

    weights: list[torch.Tensor]  # float64, masked, removed rows/columns zeroed
    biases: list[torch.Tensor]  # float64, with constant units folded in
    has_bias: list[bool]
    input_kept: list[int]
    hidden_kept: list[list[int]]
    kept_connections: int  # weights the masks keep (or non-zero weights without masks)
    total_connections: int
    live_connections: int  # kept, non-zero and on a path from an input to an output
    constant_units: list[int]  # per hidden layer: no input path, but read on a path to an output
    dead_units: list[int]  # per hidden layer: on no path to an output


class ShrunkMLP(nn.Module):
    """MLP over a subset of the flattened input features; same layout (`self.layers`) as MLP."""

    def __init__(self, in_features: int, input_index: torch.Tensor | None, layers: list[nn.Linear]):
        super().__init__()
        self.in_features = in_features
        self.layers = nn.ModuleList(layers)
        # Buffer (not a constant) so it moves with .to() and exports as an initializer + Gather.
        if input_index is not None:
            self.register_buffer("input_index", input_index)
        else:
            self.input_index = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.flatten(1)
        if self.input_index is not None:
            x = x.index_select(1, self.input_index)
        for layer in self.layers[:-1]:
            x = torch.relu(layer(x))
        return self.layers[-1](x)


def _check_mlp(model: nn.Module) -> list[nn.Linear]:
    """The model's Linear layers, or a UserError naming what the shrink cannot handle."""
    if not is_mlp(model):
        raise UserError(
            f"structural shrink supports the 'mlp' model only, got {type(model).__name__}; "
            f"{SHRINK_HINT}"
        )
    for name, mod in model.named_modules():
        if mod is model or mod is model.layers or isinstance(mod, nn.Linear):
            continue
        raise UserError(
            f"cannot shrink layer {name!r} ({type(mod).__name__}): only Linear+ReLU MLPs can be "
            f"shrunk; {SHRINK_HINT}"
        )
    return list(model.layers)


@torch.no_grad()
def _effective(layers: list[nn.Linear], masks: Mapping[str, torch.Tensor] | None
               ) -> tuple[list[torch.Tensor], list[torch.Tensor], int]:
    """Masked float64 weights, masked float64 biases (zeros when absent) and the kept-connection
    count (weights only; structured methods also mask the biases of removed units)."""
    masks = dict(masks or {})
    names = {f"layers.{i}.{kind}" for i in range(len(layers)) for kind in ("weight", "bias")}
    unknown = sorted(set(masks) - names)
    if unknown:
        raise UserError(f"masks name parameters the MLP does not have: {unknown}")
    weights, biases, kept = [], [], 0
    for i, layer in enumerate(layers):
        w = layer.weight.detach().cpu().to(torch.float64)
        mask = masks.get(f"layers.{i}.weight")
        if mask is not None:
            mask = mask.detach().cpu().to(torch.bool)
            if mask.shape != w.shape:
                raise UserError(f"mask for layers.{i}.weight has shape {tuple(mask.shape)}, "
                                f"weight has {tuple(w.shape)}")
            # A mask counts what was kept; the masked product is what the net computes.
            kept += int(mask.sum())
            w = w * mask
        else:
            kept += int((w != 0).sum())
        b = layer.bias
        b = b.detach().cpu().to(torch.float64) if b is not None else torch.zeros(w.shape[0],
                                                                               dtype=torch.float64)
        bias_mask = masks.get(f"layers.{i}.bias")
        if bias_mask is not None:
            b = b * bias_mask.detach().cpu().to(torch.bool)
        weights.append(w.clone())
        biases.append(b.clone())
    return weights, biases, kept


def _fold_constant_units(w_in: torch.Tensor, b_in: torch.Tensor, w_out: torch.Tensor,
                         b_out: torch.Tensor, alive: torch.Tensor) -> int:
    """Fold alive units with an all-zero incoming row into the next bias; returns how many."""
    const = alive & ~(w_in != 0).any(dim=1)
    n = int(const.sum())
    if n:
        # relu(b_j) is what such a unit always outputs; float64 matmul keeps the fold exact.
        b_out += w_out[:, const] @ torch.relu(b_in[const])
        w_out[:, const] = 0
        b_in[const] = 0
        alive &= ~const
    return n


def _drop_unread_units(w_in: torch.Tensor, b_in: torch.Tensor, w_out: torch.Tensor,
                       alive: torch.Tensor) -> int:
    """Remove alive units whose outgoing column is all zero; returns how many."""
    dead = alive & ~(w_out != 0).any(dim=0)
    n = int(dead.sum())
    if n:
        # Zeroing the row may turn inputs of this layer unread: the next sweep sees it.
        w_in[dead] = 0
        b_in[dead] = 0
        alive &= ~dead
    return n


def _plan(model: nn.Module, masks: Mapping[str, torch.Tensor] | None) -> _Plan:
    layers = _check_mlp(model)
    weights, biases, kept = _effective(layers, masks)
    # Counted on the weights before the fold below rewrites them.
    conn = [w != 0 for w in weights]
    states = unit_states(conn)
    live = sum(int(c.sum()) for c in live_connections(conn))
    alive = [torch.ones(w.shape[0], dtype=torch.bool) for w in weights[:-1]]
    # Every removal only zeroes entries, so the sweep terminates; repeat until nothing changes.
    changed = True
    while changed:
        changed = False
        for h in range(len(alive)):
            n_const = _fold_constant_units(weights[h], biases[h], weights[h + 1], biases[h + 1],
                                           alive[h])
            n_dead = _drop_unread_units(weights[h], biases[h], weights[h + 1], alive[h])
            changed |= bool(n_const or n_dead)
    input_alive = (weights[0] != 0).any(dim=0)
    return _Plan(
        weights=weights,
        biases=biases,
        has_bias=[layer.bias is not None for layer in layers],
        input_kept=_indices(input_alive),
        hidden_kept=[_indices(a) for a in alive],
        kept_connections=kept,
        total_connections=sum(w.numel() for w in weights),
        live_connections=live,
        constant_units=[int(c.sum()) for c in states["constant"]],
        dead_units=[int(d.sum()) for d in states["dead"]],
    )


def _indices(alive: torch.Tensor) -> list[int]:
    return [int(i) for i in torch.nonzero(alive).flatten()]


def _physical(kept: list[int]) -> list[int]:
    # Empty layer -> one placeholder unit (index 0, all-zero weights and bias): zero-width Linear is
    # not portable across ONNX runtimes, and a zero unit contributes exactly relu(0) * 0 = 0.
    return kept if kept else [0]


def _build_layers(plan: _Plan, dtype: torch.dtype) -> list[nn.Linear]:
    """Slice the surviving rows/columns out of the planned weights into new Linear layers."""
    n_layers = len(plan.weights)
    out_rows = [_physical(k) for k in plan.hidden_kept] + [list(range(plan.weights[-1].shape[0]))]
    in_cols = [_physical(plan.input_kept)] + [_physical(k) for k in plan.hidden_kept]
    layers = []
    for i in range(n_layers):
        rows, cols = torch.tensor(out_rows[i]), torch.tensor(in_cols[i])
        w = plan.weights[i].index_select(0, rows).index_select(1, cols)
        b = plan.biases[i].index_select(0, rows)
        # A bias-free layer only gains a bias if folding put something non-zero there.
        use_bias = plan.has_bias[i] or bool((b != 0).any())
        lin = nn.Linear(w.shape[1], w.shape[0], bias=use_bias, dtype=dtype)
        with torch.no_grad():
            lin.weight.copy_(w.to(dtype))
            if use_bias:
                lin.bias.copy_(b.to(dtype))
        layers.append(lin)
    return layers


def _module_params(layers: list[nn.Linear]) -> int:
    return sum(p.numel() for layer in layers for p in layer.parameters())


def _report(model: nn.Module, plan: _Plan, shrunk_layers: list[nn.Linear]) -> dict:
    """Counts shared by structure_report and the shrink spec (JSON-serialisable ints only)."""
    dense = list(model.layers)
    hidden_total = [layer.out_features for layer in dense[:-1]]
    hidden_kept = [len(k) for k in plan.hidden_kept]
    return {
        "connections": {
            "kept": plan.kept_connections,  # what the masks keep
            "total": plan.total_connections,
            "live": plan.live_connections,  # on an input -> output path: what the shrunk net has
        },
        "hidden_units": {
            "kept": sum(hidden_kept),
            "total": sum(hidden_total),
            "constant": sum(plan.constant_units),  # folded into the next layer's bias
            "dead": sum(plan.dead_units),  # reach no output
            "per_layer_kept": hidden_kept,
            "per_layer_total": hidden_total,
            "per_layer_constant": plan.constant_units,
            "per_layer_dead": plan.dead_units,
        },
        "input_features": {"kept": len(plan.input_kept), "total": dense[0].in_features},
        "params": {"dense": _module_params(dense), "shrunk": _module_params(shrunk_layers)},
        "macs": {
            "dense": sum(layer.in_features * layer.out_features for layer in dense),
            "shrunk": sum(layer.in_features * layer.out_features for layer in shrunk_layers),
        },
    }


def shrink_mlp(model: nn.Module, masks: Mapping[str, torch.Tensor] | None = None
               ) -> tuple[nn.Module, dict]:
    """A smaller module computing exactly the masked `model`'s function, and its spec.

    The spec holds the structure_report counts plus `input_kept` / `hidden_kept` (indices into
    the original layers) and `widths` (dense and physical shrunk widths, input to output).
    """
    plan = _plan(model, masks)
    ref = model.layers[0].weight
    layers = _build_layers(plan, ref.dtype)
    in_features = model.layers[0].in_features
    index = None
    if len(plan.input_kept) != in_features:
        index = torch.tensor(_physical(plan.input_kept), dtype=torch.long)
    shrunk = ShrunkMLP(in_features, index, layers).to(ref.device).eval()
    spec = {
        "kind": "mlp",
        "in_features": in_features,
        "out_features": model.layers[-1].out_features,
        "input_kept": plan.input_kept,
        "hidden_kept": plan.hidden_kept,
        "widths": {
            "dense": [in_features] + [layer.out_features for layer in model.layers],
            "shrunk": [layers[0].in_features] + [layer.out_features for layer in layers],
        },
        **_report(model, plan, layers),
    }
    return shrunk, spec


def structure_report(model: nn.Module, masks: Mapping[str, torch.Tensor] | None = None) -> dict:
    """Connections, hidden units, input features, params and MACs: dense vs after the shrink."""
    plan = _plan(model, masks)
    return _report(model, plan, _build_layers(plan, torch.float32))


def count_macs(module: nn.Module, example_input: torch.Tensor) -> int:
    """Multiply-adds per sample of the Linear, Conv and attention layers `module` runs on
    `example_input` (attention: the q/k/v and output projections and both matmuls)."""
    from compress.core.attention import PrunedAttention
    total = 0
    attention = [m for m in module.modules() if isinstance(m, (nn.MultiheadAttention,
                                                               PrunedAttention))]
    inside = {id(m.out_proj) for m in attention}  # counted with their attention layer

    def hook(mod: nn.Module, _inp: tuple, out: torch.Tensor) -> None:
        nonlocal total
        if isinstance(mod, nn.Linear):
            # Every output element is one dot product of length in_features.
            total += out.numel() * mod.in_features
        else:
            total += out.numel() * (mod.in_channels // mod.groups) * _prod(mod.kernel_size)

    def attention_hook(mod: nn.Module, inp: tuple, _out) -> None:
        nonlocal total
        x = inp[0]
        tokens = x.shape[:-1].numel()  # sequence x batch
        seq = x.shape[1] if getattr(mod, "batch_first", False) else x.shape[0]
        inner, d_in = mod.in_proj_weight.shape[0] // 3, mod.in_proj_weight.shape[1]
        total += tokens * (3 * inner * d_in + 2 * seq * inner + inner * mod.out_proj.out_features)

    kinds = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d)
    hooks = [(m, hook) for m in module.modules() if isinstance(m, kinds) and id(m) not in inside]
    observe(module, example_input, hooks + [(m, attention_hook) for m in attention])
    batch = example_input.shape[0] if example_input.dim() > 0 else 1
    return total // max(batch, 1)


def _prod(values: tuple[int, ...]) -> int:
    out = 1
    for v in values:
        out *= int(v)
    return out
