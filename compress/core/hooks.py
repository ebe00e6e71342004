"""One forward pass observed through forward hooks, leaving the model as it was."""

from __future__ import annotations

from typing import Callable, Iterable

import torch
from torch import nn


def observe(model: nn.Module, example: torch.Tensor,
            hooks: Iterable[tuple[nn.Module, Callable]]) -> None:
    """Run `model` once on `example` in eval mode (a training-mode forward would move BatchNorm
    statistics and draw dropout noise) without gradients, with each (module, hook) registered
    as a forward hook; the hooks are removed and the training mode restored afterwards."""
    handles = [m.register_forward_hook(fn) for m, fn in hooks]
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            model(example)
    finally:
        model.train(was_training)
        for h in handles:
            h.remove()
