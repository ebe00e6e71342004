"""Pruning-at-init scores (pure functions): SNIP, GraSP and SynFlow.

Every function scores the Linear/Conv weights of `model` (compress.core.masking.
prunable_parameters) and returns {parameter name: score tensor}. None of them changes `model`:
they work on a deep copy (no gradients, BatchNorm statistics or weights of the caller's model
are touched). `batches` is a sequence of (x, y) tensors; `loss_fn(logits, y)` a scalar loss.

- SNIP (Lee et al. 2019): |theta * dL/dtheta|. With several batches the gradients are summed
  before the absolute value (the gradient of the summed loss, as the SynFlow authors' SNIP).
- GraSP (Wang et al. 2020): S(-theta) = -theta * (H g), g = dL/dtheta of the temperature-scaled
  logits, H the Hessian over the same weights, Hg by double backprop. Removing weight q
  (delta = -theta_q e_q) changes the gradient norm by d||g||^2 ~= 2 delta^T H g = 2 S_q: a HIGH
  score means removing the weight keeps (or even raises) the gradient flow, so GraSP removes
  the highest scores and keeps the lowest (Algorithm 1 of the paper: remove the top p fraction
  of S(-theta); the reference code equivalently keeps the top theta * Hg).
- SynFlow (Tanaka et al. 2020): data-free. On a copy with every parameter and floating buffer
  replaced by its absolute value, in eval mode (BatchNorm then applies its init running
  statistics: a positive per-channel scale; Dropout is the identity), input = ones of the
  data's shape (batch 1), R = sum of the outputs, score = |theta * dR/dtheta|. Computed in
  float64: R is a product over layers and overflows float32 on deep nets.
  `synflow_iterative` repeats this over `rounds` rounds with exponentially decreasing density
  (round k keeps density^(k/n)), zeroing the copy's removed weights before re-scoring.
"""

from __future__ import annotations

import copy
from typing import Callable, Iterable, Literal, Mapping, Sequence

import torch
from torch import nn

from compress.core.masking import prunable_parameters
from compress.core.masks import MaskSet

Scores = dict[str, torch.Tensor]
Batch = tuple[torch.Tensor, torch.Tensor]
LossFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]

# Layers that break SynFlow's positive-flow assumption: the sum of a softmax is constant and a
# per-sample normalisation removes the all-ones signal, so the scores become zero or meaningless.
SYNFLOW_UNSUPPORTED = (nn.Softmax, nn.Softmin, nn.LogSoftmax, nn.Softmax2d, nn.LayerNorm,
                       nn.GroupNorm, nn.LocalResponseNorm, nn.modules.instancenorm._InstanceNorm,
                       nn.MultiheadAttention, nn.Embedding, nn.EmbeddingBag, nn.RNNBase)


class ScoreError(ValueError):
    """The model cannot be scored by this method (the caller turns it into a UserError)."""


def _weights(net: nn.Module) -> tuple[list[str], list[nn.Parameter]]:
    params = prunable_parameters(net)
    if not params:
        raise ScoreError("the model has no Linear or Conv weights to score")
    for p in params.values():
        p.requires_grad_(True)
    return list(params), list(params.values())


def _grads(loss: torch.Tensor, ws: list[nn.Parameter], create_graph: bool = False) -> list:
    gs = torch.autograd.grad(loss, ws, allow_unused=True, create_graph=create_graph)
    return [torch.zeros_like(w) if g is None else g for g, w in zip(gs, ws)]


def snip_scores(model: nn.Module, batches: Sequence[Batch], loss_fn: LossFn) -> Scores:
    """|theta * dL/dtheta|, dL/dtheta summed over `batches` (model in train mode, on a copy)."""
    net = copy.deepcopy(model).train()
    names, ws = _weights(net)
    total = [torch.zeros_like(w) for w in ws]
    for x, y in batches:
        for t, g in zip(total, _grads(loss_fn(net(x), y), ws)):
            t.add_(g)
    return {n: (w.detach() * g).abs() for n, w, g in zip(names, ws, total)}


def grasp_scores(model: nn.Module, batches: Sequence[Batch], loss_fn: LossFn,
                 temperature: float = 200.0) -> Scores:
    """S(-theta) = -theta * (H g) over the prunable weights (model in train mode, on a copy).

    g = sum over batches of dL_b/dtheta (logits divided by `temperature`), detached;
    Hg = sum over batches of d(dL_b/dtheta . g)/dtheta. KEEP THE LOWEST scores (see module doc).
    """
    net = copy.deepcopy(model).train()
    names, ws = _weights(net)
    g = [torch.zeros_like(w) for w in ws]
    for x, y in batches:
        for acc, gb in zip(g, _grads(loss_fn(net(x) / temperature, y), ws)):
            acc.add_(gb)
    hg = [torch.zeros_like(w) for w in ws]
    for x, y in batches:
        gb = _grads(loss_fn(net(x) / temperature, y), ws, create_graph=True)
        z = sum((a * b.detach()).sum() for a, b in zip(gb, g))
        if isinstance(z, torch.Tensor) and z.requires_grad:
            for acc, h in zip(hg, _grads(z, ws)):
                acc.add_(h)
    return {n: -(w.detach() * h) for n, w, h in zip(names, ws, hg)}


def check_synflow_model(model: nn.Module) -> None:
    """Raise ScoreError if the model has no prunable weights or a layer SynFlow cannot score."""
    if not prunable_parameters(model):
        raise ScoreError("the model has no Linear or Conv weights to score")
    for name, mod in model.named_modules():
        if isinstance(mod, SYNFLOW_UNSUPPORTED):
            raise ScoreError(f"layer {name!r} ({type(mod).__name__}) breaks SynFlow's all-ones "
                             "positive flow; use snip or grasp for this model")


def linearised(model: nn.Module, dtype: torch.dtype = torch.float64) -> nn.Module:
    """SynFlow's network: a copy in `dtype`, eval mode, every float parameter/buffer -> |value|."""
    check_synflow_model(model)
    net = copy.deepcopy(model).to(dtype).eval()
    with torch.no_grad():
        for t in net.state_dict().values():  # shares storage with the copy's tensors
            if t.is_floating_point():
                t.abs_()
    return net


def _synflow_round(net: nn.Module, input_shape: Sequence[int]) -> Scores:
    names, ws = _weights(net)
    ref = ws[0]
    x = torch.ones((1, *input_shape), dtype=ref.dtype, device=ref.device)
    r = net(x).sum()
    return {n: (w.detach() * g).abs() for n, w, g in zip(names, ws, _grads(r, ws))}


@torch.no_grad()
def _mask_weights(net: nn.Module, masks: Mapping[str, torch.Tensor]) -> None:
    params = dict(net.named_parameters())
    for n, m in masks.items():
        params[n].mul_(m.to(params[n].device, params[n].dtype))


def synflow_iterative(model: nn.Module, input_shape: Sequence[int], density: float, rounds: int,
                      scope: Literal["layerwise", "global"] = "global",
                      names: Iterable[str] | None = None, current: MaskSet | None = None,
                      on_round: Callable[[int, MaskSet], None] | None = None) -> Scores:
    """The last of `rounds` SynFlow rounds; round k < rounds keeps density^(k/rounds).

    Only `names` (default: every prunable weight) compete; `current` masks (default all kept)
    never regrow. Returns the final round's scores with every weight removed earlier (by a
    round or by `current`) at -inf, so `select(scores, density, scope)` gives the final mask.
    `on_round(k, mask)` sees each intermediate mask.
    """
    from compress.core.scoring import select  # scoring imports masking only: no cycle

    net = linearised(model)
    all_names = list(prunable_parameters(net))
    names = list(names) if names is not None else all_names
    if not names:
        raise ScoreError("no weights left to score")
    mask = MaskSet({n: current[n] if current is not None and n in current
                    else torch.ones_like(dict(net.named_parameters())[n], dtype=torch.bool)
                    for n in names})
    for k in range(1, rounds + 1):
        _mask_weights(net, mask)
        scores = {n: s for n, s in _synflow_round(net, input_shape).items() if n in mask}
        if k == rounds:
            return {n: s.masked_fill(~mask[n], float("-inf")) for n, s in scores.items()}
        mask = select(scores, density ** (k / rounds), scope, current=mask)
        if on_round is not None:
            on_round(k, mask)
    raise AssertionError("unreachable")  # rounds >= 1
