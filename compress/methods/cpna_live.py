"""CPNA's live connection budget: one layer's selection when every kept connection must be live.

A connection is live when it lies on a path from an input to an output (compress.core.live).
Pruning a layer can take a unit's last input: the unit then outputs a constant, and its outgoing
connections, still counted by the paper's per-layer budgets, compute nothing that depends on the
input. Two ways to keep the budget on live connections:
  * release: such a unit's outgoing connections are released and the freed budget goes to the
    next best connections of the layer being pruned. Selection walks the candidates in score
    order; a unit's first input costs 1 plus its outgoing live connections (the connection keeps
    them live), every further input costs 1; the budget is the layer's annealed count plus what
    the layers downstream were given and do not use (see CPNAHook: it holds the schedule).
  * revive: every unit with outgoing live connections keeps its best input (its best input path),
    the rest of the layer's count goes by score. Units lose their last input only when the layer's
    count is smaller than the number of such units (the weakest best paths go first).
"""

from __future__ import annotations

import torch

from compress.core.masking import keep_top


# Both take scores (out, in), -inf where a connection is no candidate, and fan_out (out,): the
# live outgoing connections of each target unit (zeros for the output layer). Both return the
# boolean (out, in) mask of the layer's kept connections.


def keep_release(scores: torch.Tensor, budget: int, fan_out: torch.Tensor) -> torch.Tensor:
    """The best connections whose cost (1 each, plus fan_out for a unit's first) fits budget."""
    n_rows, n_cols = scores.shape
    flat = scores.flatten()
    order = torch.sort(flat, descending=True, stable=True).indices
    order = order[torch.isfinite(flat[order])]  # candidates only (a NaN score is none either)
    n = len(order)
    rows = order // n_cols
    pos = torch.arange(n)
    # Position (in score order) of each unit's best candidate: the one that revives it.
    first = torch.full((n_rows,), n, dtype=torch.long).scatter_reduce(0, rows, pos, "amin")
    opens = first[rows] == pos
    cost = 1 + opens.to(torch.long) * fan_out.to(torch.long)[rows]
    take = cost.cumsum(0) <= budget  # a prefix: costs are positive
    spent = int(cost[take].sum())
    # What the prefix leaves goes to further inputs of units it already connected (cost 1 each).
    connected = first < int(take.sum())
    extra = torch.nonzero(~take & ~opens & connected[rows]).flatten()[:max(0, budget - spent)]
    take[extra] = True
    mask = torch.zeros(n_rows * n_cols, dtype=torch.bool)
    mask[order[take]] = True
    return mask.view(n_rows, n_cols)


def keep_revive(scores: torch.Tensor, keep: int, fan_out: torch.Tensor) -> torch.Tensor:
    """keep connections: first the best input of every unit with fan_out, then by score."""
    best_score, best_col = scores.max(1)
    protect = torch.isfinite(best_score) & (fan_out > 0)
    n_protect = int(protect.sum())
    if n_protect >= keep:
        # Not enough budget for one input per unit: the strongest best paths stay.
        rows = keep_top(best_score.masked_fill(~protect, float("-inf")), keep) & protect
        mask = torch.zeros_like(scores, dtype=torch.bool)
        mask[rows, best_col[rows]] = True
        return mask
    mask = torch.zeros_like(scores, dtype=torch.bool)
    mask[protect, best_col[protect]] = True
    rest = scores.masked_fill(mask, float("-inf"))
    return mask | keep_top(rest, min(keep - n_protect, int(torch.isfinite(rest).sum())))
