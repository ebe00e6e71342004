"""The export's structural shrink, in one place: which shrink a model gets is decided here.

- an MLP (a module declaring `shrink_kind = "mlp"`, e.g. compress.models.mlp): dead hidden units and unread input features go, constant units
  fold into the next bias (compress.core.structure);
- any other model torch.fx can trace, physically pruned before or not (CNNs, vision
  transformers, models rebuilt from an architecture spec): dead channels and attention heads
  of its exact groups go (compress.core.channels), widths following `export.round`.

Either way the result computes the masked model's function (checked), except under a width
rule that rounds down, which also removes the live units named in the spec's `live_removed`
(`reference` builds the model the result then equals).
"""

from __future__ import annotations

from typing import Mapping

import torch
from torch import nn


def shrink(model: nn.Module, masks: Mapping[str, torch.Tensor] | None, example: torch.Tensor,
           *, round_to: int = 8, rounding: str = "budget", budget: float = 0.1,
           rtol: float = 1e-4,
           strict: bool = False, widths=None) -> tuple[nn.Module, dict]:
    """The physically smaller module computing the masked `model`'s function, and its spec;
    or `model` itself with spec['shrunk'] False and the reason when nothing can be removed,
    or (unless `strict`) when the model cannot be analysed. `strict` also refuses dead
    channels that only surgery could remove (a LayerNorm over them)."""
    from compress.core.structure import is_mlp, shrink_mlp
    if is_mlp(model):
        return shrink_mlp(model, masks)
    from compress.core.channels import ShrinkUnsupported, shrink_channels
    from compress.core.widths import rule
    try:
        chosen = widths or rule(rounding, int(round_to), model, example, budget)
        net, spec = shrink_channels(model, example, masks, round_to=round_to, rtol=rtol,
                                    widths=chosen, strict=strict)
    except ShrinkUnsupported as e:
        if strict:
            raise
        return model, {"shrunk": False, "reason": str(e)}
    spec["rounding"] = rounding
    if all(g["kept"] == g["original"] for g in spec["groups"]):
        return model, {**spec, "shrunk": False, "reason": "no channel can be removed"}
    return net, {**spec, "shrunk": True}


def reference(model: nn.Module, spec: dict, example: torch.Tensor) -> nn.Module:
    """The model the shrunk module equals: `model` (already masked) itself, or, when a width
    rule removed live units, a copy with those units masked too."""
    live = spec.get("live_removed")
    if not live:
        return model
    import copy

    from compress.core.channels import channel_graph, channel_masks
    from compress.core.masking import apply_masks
    ref = copy.deepcopy(model).eval()
    groups = channel_graph(ref, example).groups
    apply_masks(ref, channel_masks(ref, example, live, groups))
    return ref


def structure(model: nn.Module, masks: Mapping[str, torch.Tensor] | None) -> dict:
    """What a stage records of its model's structure: for an MLP, connections (live), hidden
    units (kept / constant / dead) and input features; for other models the connections, and
    the output channels (units) of every prunable layer but the last that keep any weight."""
    from compress.core.masking import prunable_parameters
    from compress.core.structure import is_mlp, structure_report
    if is_mlp(model):
        return structure_report(model, masks)
    params = prunable_parameters(model)
    kept = {n: (masks[n] if masks and n in masks else torch.ones(p.shape, dtype=torch.bool))
            for n, p in params.items()}
    hidden = list(kept.values())[:-1]
    return {"connections": {"kept": sum(int(m.sum()) for m in kept.values()),
                            "total": sum(p.numel() for p in params.values())},
            "channels": {"kept": sum(int(m.flatten(1).any(1).sum()) for m in hidden),
                         "total": sum(m.shape[0] for m in hidden)}}
