"""Which units and connections of a masked MLP are live: on a path from an input to an output.

`conn[i]` is layer i's kept connections as a boolean (out, in) matrix; the levels are the inputs,
the hidden layers and the outputs. A connection is live when its source is reached from an input
feature and its target reaches an output, both through kept connections. A hidden unit is
  * kept: reached from an input and reaching an output (on a live path),
  * constant: reaching an output but reached from no input; it outputs relu(b) whatever the
    input, so an export folds it into the next layer's bias and its outgoing connections carry
    nothing that depends on the data,
  * dead: reaching no output, whatever its inputs.
Pure boolean graph code: the structure report and CPNA's live budget share it.
"""

from __future__ import annotations

from typing import Sequence

import torch


def reachability(conn: Sequence[torch.Tensor]) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """Per level (inputs, hidden..., outputs): reached from an input, and reaches an output."""
    forward = [torch.ones(conn[0].shape[1], dtype=torch.bool, device=conn[0].device)]
    for c in conn:
        # A unit is reached when one of its kept inputs comes from a reached unit.
        forward.append((c & forward[-1][None, :]).any(1))
    backward = [torch.ones(conn[-1].shape[0], dtype=torch.bool, device=conn[-1].device)]
    for c in reversed(conn):
        backward.insert(0, (c & backward[0][:, None]).any(0))
    return forward, backward


def live_connections(conn: Sequence[torch.Tensor]) -> list[torch.Tensor]:
    """The kept connections that lie on a path from an input to an output."""
    forward, backward = reachability(conn)
    return [c & backward[i + 1][:, None] & forward[i][None, :] for i, c in enumerate(conn)]


def unit_states(conn: Sequence[torch.Tensor]) -> dict[str, list[torch.Tensor]]:
    """Per hidden layer, boolean vectors of kept, constant and dead units (they partition it)."""
    forward, backward = reachability(conn)
    hidden = range(1, len(conn))
    return {"kept": [forward[h] & backward[h] for h in hidden],
            "constant": [~forward[h] & backward[h] for h in hidden],
            "dead": [~backward[h] for h in hidden]}
