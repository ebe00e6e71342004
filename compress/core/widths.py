"""How many units each group keeps when the export shrinks a model (`export.round`).

Odd widths run slowly in onnxruntime's conv kernels, so widths are rounded to multiples of
`export.round_to`. Rounding up keeps dead units (zeros: the output is unchanged) but can cancel
the pruning it follows: 22 live channels of 32 rounded up to 16 keep all 32. The rules:

- up:      every group rounded up (exact; may give back much of the MACs reduction);
- budget:  groups rounded up cheapest-first while the model's MACs stay within `budget`
           (default 10%) of its MACs at exact widths; the rest keep exact widths (exact);
- down:    rounded down (at least one multiple): live units with the smallest filter norms go
           too, so the exported model is no longer the masked model (its parity is checked
           against the masked model with those units removed, and its accuracy is reported);
- nearest: the nearer of the two (ties up).

A rule is a function (groups, alive, rounded_up) -> {group: units kept}; `alive` holds each
group's live units, `rounded_up` the widths of `up`. Latency-aware widths (compress.export)
use the same hook.
"""

from __future__ import annotations

import math
from typing import Callable, Mapping, Sequence

import torch
from torch import nn

from compress.errors import UserError

RULES = ("up", "budget", "down", "nearest")
Widths = Callable[[Sequence, Mapping[str, torch.Tensor], Mapping[str, int]], dict[str, int]]


def _down(alive: int, size: int, multiple: int) -> int:
    return min(size, max(multiple, alive // multiple * multiple)) if alive else min(size, multiple)


def rule(name: str, round_to: int, model: nn.Module | None = None,
         example: torch.Tensor | None = None, budget: float = 0.1) -> Widths | None:
    """The widths rule `name` (None for `up`, the shrink's own rounding)."""
    if name not in RULES:
        raise UserError(f"unknown width rule {name!r}; choose one of {', '.join(RULES)}")
    if name == "up" or round_to == 1:
        return None
    if name in ("down", "nearest"):
        def snap(groups, alive, up):
            out = {}
            for g in groups:
                n = int(alive[g.name].sum())
                lo, hi = _down(n, g.size, round_to), up[g.name]
                out[g.name] = lo if name == "down" or (n - lo) < (hi - n) else hi
            return out
        return snap
    return lambda groups, alive, up: _within_budget(model, example, groups, alive, up, budget)


def unit_macs(model: nn.Module, example: torch.Tensor, groups: Sequence) -> dict[str, float]:
    """MACs one unit of each group costs: for each conv/linear layer producing it, that
    layer's MACs per output channel, and for each reading it, its MACs per input channel."""
    from compress.core.flops import layer_macs
    macs = layer_macs(model, example)
    params = dict(model.named_parameters())
    out = {}
    for g in groups:
        cost = 0.0
        for m in g.members:
            if m.param in macs:
                w = params[m.param]
                width = w.shape[0] if m.produces else w.shape[1] * (m.groups if m.groups > 1 else 1)
                cost += macs[m.param] / max(width, 1) * float((m.units >= 0).sum()) / g.size
        out[g.name] = cost
    return out


def _within_budget(model, example, groups, alive, up, budget: float) -> dict[str, int]:
    """Exact widths, then groups rounded up in order of the MACs their padding costs, while
    the total padding stays within `budget` of the model's MACs at exact widths."""
    from compress.core.structure import count_macs
    exact = {g.name: max(1, int(alive[g.name].sum())) for g in groups}
    per_unit = unit_macs(model, example, groups)
    dense = count_macs(model, example[:1])
    # MACs at exact widths, estimated from the dense count minus what each removal saves.
    at_exact = max(dense - sum(per_unit[g.name] * (g.size - exact[g.name]) for g in groups),
                   1.0)
    allowance = budget * at_exact
    extra = sorted(((per_unit[g.name] * (up[g.name] - exact[g.name]), g.name) for g in groups
                    if up[g.name] > exact[g.name]))
    out = dict(exact)
    for cost, name in extra:
        if cost > allowance:
            break
        allowance -= cost
        out[name] = up[name]
    return out


def live_to_drop(model: nn.Module, groups: Sequence, alive: Mapping[str, torch.Tensor],
                 keep: Mapping[str, int]) -> dict[str, list[int]]:
    """Live units that must go for each group to keep `keep` units: the smallest filter
    norms (only where `keep` is below the live count)."""
    from compress.core.scoring import filter_l1
    out = {}
    for g in groups:
        n_alive = int(alive[g.name].sum())
        if keep[g.name] >= n_alive:
            continue
        score = filter_l1(model, g).masked_fill(~alive[g.name], math.inf)
        order = torch.argsort(score, stable=True)[:n_alive - keep[g.name]]
        out[g.name] = sorted(order.tolist())
    return out
