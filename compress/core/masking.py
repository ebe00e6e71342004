"""Apply masks to a model and keep pruned weights exactly zero through training.

Masks are enforced on the stored weights (not by a forward-time multiply): the forward pass
stays the dense kernel with no overhead, and `apply_masks` after every optimizer step keeps
pruned entries at exactly 0.0 whatever the optimizer does (momentum, Adam moments, decay).
"""

from __future__ import annotations

from typing import Mapping

import torch
from torch import nn

from compress.core import dist
from compress.core.masks import MaskSet

PRUNABLE_TYPES = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d)


def prunable_parameters(model: nn.Module) -> dict[str, nn.Parameter]:
    """Weights of Linear and Conv layers, by parameter name (never biases or norms)."""
    out = {}
    for mod_name, mod in model.named_modules():
        if isinstance(mod, PRUNABLE_TYPES) and getattr(mod, "weight", None) is not None:
            out[f"{mod_name}.weight" if mod_name else "weight"] = mod.weight
    return out


def keep_top(scores: torch.Tensor, k: int) -> torch.Tensor:
    """Boolean mask keeping exactly the k largest scores; ties at the threshold go to the
    earliest positions (the order a stable descending sort gives).

    A selection (kthvalue, O(n)) instead of a full sort: edge-popup calls this on every
    forward, and for a 4M-weight layer the sort alone was ~4x slower.
    """
    flat = scores.detach().flatten()
    n = flat.numel()
    k = max(0, min(int(k), n))
    if k in (0, n):
        return torch.full_like(scores, k == n, dtype=torch.bool)
    if torch.isnan(flat).any():  # NaN scores: fall back to the sort (NaN counts as largest)
        mask = torch.zeros(n, dtype=torch.bool, device=flat.device)
        mask[torch.sort(flat, descending=True, stable=True).indices[:k]] = True
        return mask.view_as(scores)
    threshold = torch.kthvalue(flat, n - k + 1).values
    above = flat > threshold
    tie = flat == threshold
    mask = above | (tie & (tie.cumsum(0) <= k - int(above.sum())))
    return mask.view_as(scores)


@torch.no_grad()
def apply_masks(model: nn.Module, masks: Mapping[str, torch.Tensor]) -> None:
    """Zero every pruned weight in place."""
    params = dict(model.named_parameters())
    for name, m in masks.items():
        p = params[name]
        p.mul_(m.to(p.device, p.dtype))


class MaskEnforcer:
    """Training hook: masked gradients before the step, masked weights after it.

    When the mask changes (`update`), optimizer state of newly removed weights is reset so a
    pruned connection carries no momentum. Under torchrun every rank computes its masks from
    identical weights; binding or updating them checks that they are identical on every rank.
    """

    def __init__(self, masks: MaskSet):
        self.masks = masks
        self._params: dict[str, nn.Parameter] = {}
        self._device_masks: dict[str, torch.Tensor] = {}

    def bind(self, model: nn.Module) -> None:
        params = dict(model.named_parameters())
        missing = [n for n in self.masks if n not in params]
        if missing:
            raise KeyError(f"masks name parameters the model does not have: {missing}")
        self._params = {n: params[n] for n in self.masks}
        self._device_masks = {
            n: m.to(self._params[n].device, self._params[n].dtype) for n, m in self.masks.items()
        }
        dist.check_same(self.masks.values(), "masks")
        apply_masks(model, self.masks)

    @torch.no_grad()
    def mask_grads(self) -> None:
        for n, p in self._params.items():
            if p.grad is not None:
                p.grad.mul_(self._device_masks[n])

    @torch.no_grad()
    def mask_weights(self) -> None:
        for n, p in self._params.items():
            p.mul_(self._device_masks[n])

    @torch.no_grad()
    def update(self, masks: MaskSet, optimizer: torch.optim.Optimizer | None = None) -> None:
        self.masks = masks
        self._device_masks = {
            n: m.to(self._params[n].device, self._params[n].dtype) for n, m in masks.items()
        }
        dist.check_same(masks.values(), "masks")
        self.mask_weights()
        if optimizer is not None:
            for n, p in self._params.items():
                for value in optimizer.state.get(p, {}).values():
                    if torch.is_tensor(value) and value.shape == p.shape:
                        value.mul_(self._device_masks[n])
