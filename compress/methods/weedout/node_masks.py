"""Node (hidden unit) and channel masks: sample them, evaluate many at once, turn them into weights.

A node mask is a 0/1 vector per maskable layer that multiplies the layer's output activations
(a Hadamard product over units, or over output channels of a convolution). Maskable layers are
every Conv and every Linear except the network's last prunable layer (the classifier output,
never masked). When a BatchNorm directly follows the layer, the mask is applied to the
BatchNorm's output (the unit's normalised activation), so a masked unit outputs exactly 0.

A node mask is equivalent to a weight mask that zeroes the unit's incoming row (a conv's
filter) AND its outgoing column in the next layer (a conv's input-channel slice; after a flatten,
the block of H*W columns that channel feeds). `node_to_weight_masks` does that conversion; it
is exact only for chain-structured nets (each layer feeds only the next prunable layer), which
`check_chain` verifies numerically (residual nets fail it).

Evaluating a population without copying the network: `NodeMaskHooks` puts a forward hook on
each maskable layer. The batch of B samples runs through the unmasked prefix of the net once;
the first hooked layer expands its output to m*B rows (one copy of the batch per candidate)
multiplied by each candidate's vector; later hooked layers multiply their m*B rows by per-sample
masks. So candidates share the computation before the first mask (for an MLP the whole first
Linear, the largest matmul of LeNet-300-100) and the rest runs as one large batched matmul.
Measured on LeNet-300-100, m = 100, B = 256, on 2 cores shared with other jobs: 0.3-0.5 s per
population stacked against 3.1-3.6 s for swapping one candidate's vectors at a time (the same
hooks with m = 1), so stacking is the default; `population_losses(chunk=1)` is the one-at-a-time
path. Chunks of candidates keep a stacked forward's activations under ACTIVATION_BUDGET.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterator, Literal, Mapping

import torch
from torch import nn

from compress.core.masking import prunable_parameters
from compress.core.masks import MaskSet
from compress.errors import UserError

Population = dict[str, torch.Tensor]   # layer weight name -> bool [m, units]
NodeScope = Literal["layerwise", "global"]
_NORMS = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)
_CONVS = (nn.Conv1d, nn.Conv2d, nn.Conv3d)
# Floats of activations a stacked chunk may hold at once (256 MB of float32).
ACTIVATION_BUDGET = 1 << 26


@dataclass(frozen=True)
class NodeLayer:
    """One maskable layer: `name` is its weight's parameter name (e.g. 'layers.0.weight')."""

    name: str
    module: nn.Module        # the Linear / Conv producing the units
    hooked: nn.Module        # where the mask multiplies: the layer, or the BatchNorm right after it
    units: int               # output features / output channels
    consumer: str            # weight name of the next prunable layer (reads these units)
    block: int               # consumer input columns per unit: 1, or H*W when a conv feeds a Linear


def node_layers(model: nn.Module) -> list[NodeLayer]:
    """Maskable layers in forward order: all prunable layers but the last (the output layer)."""
    params = prunable_parameters(model)
    names = list(params)
    modules = dict(model.named_modules())
    following = _following_modules(model)
    out = []
    for name, consumer in zip(names[:-1], names[1:]):
        mod = modules[name.removesuffix(".weight")] if name != "weight" else model
        cons = modules[consumer.removesuffix(".weight")] if consumer != "weight" else model
        units = int(mod.weight.shape[0])
        nxt = following.get(id(mod))
        hooked = nxt if isinstance(nxt, _NORMS) and nxt.num_features == units else mod
        out.append(NodeLayer(name, mod, hooked, units, consumer, _block(name, mod, cons, units)))
    return out


def _following_modules(model: nn.Module) -> dict[int, nn.Module]:
    """id(module) -> the leaf module registered right after it (e.g. a conv's BatchNorm)."""
    leaves = [m for m in model.modules() if not list(m.children())]
    return {id(a): b for a, b in zip(leaves, leaves[1:])}


def _block(name: str, mod: nn.Module, cons: nn.Module, units: int) -> int:
    fan_in = int(cons.weight.shape[1]) * (getattr(cons, "groups", 1) or 1)
    if isinstance(cons, _CONVS) or not isinstance(mod, _CONVS):
        if fan_in != units or getattr(cons, "groups", 1) != 1:
            raise UserError(f"layer {name.removesuffix('.weight')!r} has {units} outputs but the "
                            f"next layer reads {fan_in}: node masks need a chain of layers, each "
                            "feeding the next (models mlp, lenet300, conv2/4/6)")
        return 1
    if fan_in % units:
        raise UserError(f"layer {name.removesuffix('.weight')!r} has {units} channels but the "
                        f"next Linear reads {fan_in} features (not a multiple): node masks need "
                        "a chain of layers, each feeding the next")
    return fan_in // units


def require_layers(model: nn.Module) -> list[NodeLayer]:
    """node_layers, or a one-line UserError when the model has nothing to mask."""
    layers = node_layers(model)
    if not layers:
        raise UserError(f"{type(model).__name__} has no hidden units or conv channels to mask "
                        "(only its output layer); give the model at least one hidden layer")
    return layers


# ------------------------------------------------------------------------- sampling
def kept_count(units: int, density: float) -> int:
    """Units a layer keeps at `density`: round half up, at least 1, at most all."""
    return max(1, min(units, int(density * units + 0.5)))


def global_kept_count(layers: list[NodeLayer], density: float) -> int:
    total = sum(lay.units for lay in layers)
    return max(len(layers), min(total, int(density * total + 0.5)))


def sample(layers: list[NodeLayer], m: int, density: float, scope: NodeScope,
           gen: torch.Generator) -> Population:
    """m random node masks: exactly kept_count per layer (layerwise) or global_kept_count in
    total (global; every layer keeps at least one unit, its highest-scoring one)."""
    if scope == "layerwise":
        out = {}
        for lay in layers:
            order = torch.rand(m, lay.units, generator=gen).argsort(dim=1, stable=True)
            mask = torch.zeros(m, lay.units, dtype=torch.bool)
            mask.scatter_(1, order[:, :kept_count(lay.units, density)], True)
            out[lay.name] = mask
        return out
    scores = torch.rand(m, sum(lay.units for lay in layers), generator=gen)
    start = 0
    for lay in layers:  # reserve each layer's best-scoring unit: no layer ends up empty
        seg = scores[:, start:start + lay.units]
        seg.scatter_add_(1, seg.argmax(dim=1, keepdim=True), torch.ones(m, 1))
        start += lay.units
    order = scores.argsort(dim=1, descending=True, stable=True)
    flat = torch.zeros_like(scores, dtype=torch.bool)
    flat.scatter_(1, order[:, :global_kept_count(layers, density)], True)
    return split(layers, flat)


def split(layers: list[NodeLayer], flat: torch.Tensor) -> Population:
    """[m, total units] -> per-layer [m, units]."""
    out, start = {}, 0
    for lay in layers:
        out[lay.name] = flat[:, start:start + lay.units].clone()
        start += lay.units
    return out


def flatten(layers: list[NodeLayer], pop: Population) -> torch.Tensor:
    return torch.cat([pop[lay.name] for lay in layers], dim=1)


def size(pop: Mapping[str, torch.Tensor]) -> int:
    return int(next(iter(pop.values())).shape[0])


def take(pop: Mapping[str, torch.Tensor], index) -> dict[str, torch.Tensor]:
    """Candidates `index` (a list / tensor of positions) as a new population."""
    idx = torch.as_tensor(index, dtype=torch.long).reshape(-1)
    return {n: v.index_select(0, idx).clone() for n, v in pop.items()}


def concat(*pops: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {n: torch.cat([p[n] for p in pops], dim=0) for n in pops[0]}


def permute_subsets(mask: torch.Tensor, fraction: float, gen: torch.Generator) -> torch.Tensor:
    """Per row of a bool [m, n]: pick round(fraction * n) (>= 2) positions at random and shuffle
    their values among them. Counts of kept entries per row are unchanged."""
    m, n = mask.shape
    r = max(2, min(n, int(fraction * n + 0.5)))
    out = mask.clone()
    for i in range(m):
        pos = torch.randperm(n, generator=gen)[:r]
        out[i, pos] = out[i, pos[torch.randperm(r, generator=gen)]]
    return out


def mutate(layers: list[NodeLayer], pop: Population, fraction: float, scope: NodeScope,
           gen: torch.Generator) -> Population:
    """Resample `fraction` of the nodes of every candidate, keeping the kept counts: per layer
    (layerwise) or over all maskable nodes (global; a layer left empty gets back one unit
    in exchange for one of the fullest layer's)."""
    if scope == "layerwise":
        return {lay.name: permute_subsets(pop[lay.name], fraction, gen) for lay in layers}
    out = split(layers, permute_subsets(flatten(layers, pop), fraction, gen))
    for i in range(size(out)):
        for lay in layers:
            if not out[lay.name][i].any():
                donor = max(layers, key=lambda d: int(out[d.name][i].sum()))
                on = torch.nonzero(out[donor.name][i]).flatten()
                out[donor.name][i, on[torch.randint(len(on), (1,), generator=gen)]] = False
                out[lay.name][i, torch.randint(lay.units, (1,), generator=gen)] = True
    return out


# ------------------------------------------------------------------------- conversion
def node_to_weight_masks(model: nn.Module, layers: list[NodeLayer],
                         nodes: Mapping[str, torch.Tensor]) -> MaskSet:
    """Weight masks (every prunable layer) equal to the node mask `nodes` (name -> bool [units]):
    a removed unit loses its incoming row / filter and its outgoing column(s) in the consumer."""
    params = prunable_parameters(model)
    out = {n: torch.ones(p.shape, dtype=torch.bool) for n, p in params.items()}
    for lay in layers:
        keep = nodes[lay.name].to(torch.bool).cpu()
        w = out[lay.name]
        out[lay.name] = w & keep.view(-1, *([1] * (w.dim() - 1)))
        c = out[lay.consumer]
        cols = keep.repeat_interleave(lay.block)
        out[lay.consumer] = c & cols.view(1, -1, *([1] * (c.dim() - 2)))
    return MaskSet(out)


# ------------------------------------------------------------------------- evaluation
class NodeMaskHooks:
    """Forward hooks that multiply each maskable layer's output by per-candidate node masks.

    `set(masks, batch)` installs float [m, units] vectors for a forward over `batch` samples:
    the first hooked layer turns its [batch, ...] output into [m * batch, ...] (candidate-major),
    later ones multiply their [m * batch, ...] rows. `clear()` restores the plain network.
    Use as a context manager so the hooks are always removed.
    """

    def __init__(self, layers: list[NodeLayer]):
        self.layers = layers
        self.masks: dict[str, torch.Tensor] | None = None
        self.batch = 0
        self._handles = []

    def __enter__(self) -> "NodeMaskHooks":
        for lay in self.layers:
            self._handles.append(lay.hooked.register_forward_hook(self._hook(lay.name)))
        return self

    def __exit__(self, *exc) -> bool:
        for h in self._handles:
            h.remove()
        self._handles.clear()
        self.masks = None
        return False

    def set(self, masks: Mapping[str, torch.Tensor], batch: int) -> None:
        self.masks = {n: v.to(torch.float32) for n, v in masks.items()}
        self.batch = batch

    def clear(self) -> None:
        self.masks = None

    def _hook(self, name: str):
        def hook(_mod, _inp, out: torch.Tensor):
            if self.masks is None or name not in self.masks:
                return None
            mask = self.masks[name].to(out.device, out.dtype)
            m, b = mask.shape[0], self.batch
            shape = (m, 1, mask.shape[1]) + (1,) * (out.dim() - 2)
            if out.shape[0] == b:          # not yet expanded: one copy of the batch per candidate
                return (out.unsqueeze(0) * mask.view(shape)).reshape(m * b, *out.shape[1:])
            if out.shape[0] == m * b:
                return (out.view(m, b, *out.shape[1:]) * mask.view(shape)).reshape(out.shape)
            raise RuntimeError(f"node mask hook on {name}: batch {out.shape[0]} is neither "
                               f"{b} nor {m} x {b}")
        return hook


def candidate_losses(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Mean loss per candidate from logits [m, B, C] (loss_fn's rule: BCE for one logit, CE)."""
    m, b, c = logits.shape
    if c == 1:
        per = nn.functional.binary_cross_entropy_with_logits(
            logits[..., 0], y.float().expand(m, b), reduction="none")
    else:
        per = nn.functional.cross_entropy(logits.reshape(m * b, c), y.repeat(m),
                                          reduction="none").view(m, b)
    return per.mean(dim=1)


def per_sample_floats(model: nn.Module, example: torch.Tensor) -> int:
    """Activation floats one sample produces across all leaf modules (sizes stacked chunks)."""
    total = 0

    def hook(_m, _i, out):
        nonlocal total
        if torch.is_tensor(out):
            total += out[:1].numel()

    leaves = [m for m in model.modules() if not list(m.children())]
    handles = [m.register_forward_hook(hook) for m in leaves]
    try:
        with torch.no_grad():
            model(example[:1])
    finally:
        for h in handles:
            h.remove()
    return max(1, total)


def auto_chunk(model: nn.Module, x: torch.Tensor) -> int:
    """Candidates per stacked forward so a chunk's activations stay within ACTIVATION_BUDGET."""
    return max(1, ACTIVATION_BUDGET // (len(x) * per_sample_floats(model, x)))


@torch.no_grad()
def population_losses(model: nn.Module, hooks: NodeMaskHooks, pop: Mapping[str, torch.Tensor],
                      x: torch.Tensor, y: torch.Tensor, chunk: int | None = None) -> torch.Tensor:
    """Loss of every candidate on (x, y), model in eval mode; `chunk` candidates per forward
    (None: as many as the activation budget allows; 1: one candidate at a time)."""
    m = size(pop)
    chunk = chunk or auto_chunk(model, x)
    was_training = model.training
    model.eval()
    out = []
    try:
        for start in _ranges(m, chunk):
            part = {n: v[start] for n, v in pop.items()}
            k = start.stop - start.start
            hooks.set(part, len(x))
            logits = model(x)
            out.append(candidate_losses(logits.view(k, len(x), -1), y))
    finally:
        hooks.clear()
        model.train(was_training)
    return torch.cat(out)


def _ranges(m: int, chunk: int) -> Iterator[slice]:
    for s in range(0, m, chunk):
        yield slice(s, min(m, s + chunk))


@torch.no_grad()
def check_chain(model: nn.Module, layers: list[NodeLayer], x: torch.Tensor,
                gen: torch.Generator | None = None) -> None:
    """UserError unless the hooked forward equals the converted-weight forward on `x` for a random
    node mask (i.e. the layers form a chain, so a node mask is a weight mask)."""
    gen = gen or torch.Generator().manual_seed(0)
    nodes = {n: v[0] for n, v in sample(layers, 1, 0.5, "layerwise", gen).items()}
    was_training = model.training
    model.eval()
    try:
        with NodeMaskHooks(layers) as hooks:
            hooks.set({n: v[None] for n, v in nodes.items()}, len(x))
            hooked = model(x)
        weights = node_to_weight_masks(model, layers, nodes)
        params = prunable_parameters(model)
        masked = {n: params[n] * weights[n].to(params[n].dtype) for n in weights}
        explicit = torch.func.functional_call(model, masked, (x,))
    finally:
        model.train(was_training)
    scale = float(explicit.abs().max()) + 1e-12
    if hooked.shape != explicit.shape or not torch.allclose(hooked, explicit, rtol=1e-4,
                                                            atol=1e-5 * scale):
        raise UserError(f"node masks do not fit {type(model).__name__}: removing a unit's row "
                        "and its column in the next layer does not match masking its output, so "
                        "the layers are not a simple chain (e.g. residual connections); use "
                        "scope=unstructured, or models mlp, lenet300, conv2/4/6")

