"""Pruning random networks: edge-popup (Ramanujan et al.) and IteRand (Chijiwa et al.).

Weights are frozen at random values drawn from a seed; only one score per weight trains, and
each layer keeps its top `density` fraction by score (straight-through gradients to every
score). IteRand additionally redraws, every `k_per` steps, each currently pruned weight with
probability `r`. The result is stored as the base seed, every randomisation event's seed and
the positions it redrew, and the final mask: `rebuild` regenerates the weights bit for bit,
and the export refuses a model whose stored weights differ from the rebuild.
"""

from __future__ import annotations

import torch
from pydantic import Field

from compress.core.loop import BaseHook, fit
from compress.core.masking import prunable_parameters
from compress.core.masks import MaskSet
from compress.errors import UserError
from compress.methods.base import DensityTarget, Method, PruneContext, PruneResult
from compress.methods.edgepopup import scores as sm
from compress.methods.presets import LENET_MNIST5K, TINY_MLP, tiny
from compress.registry import register_method

EVENT_SEED_STRIDE = 1_000_003  # event i's seed = base seed * stride + i: distinct, reproducible


class EdgePopupParams(DensityTarget):
    """`density` is the fraction of weights KEPT in every layer (edge-popup's `prune_rate`)."""

    weight_init: sm.WeightInit = "signed_constant"
    first_layer_dense: bool = False
    last_layer_dense: bool = False
    weight_seed: int | None = Field(None, description="base seed of the random weights (default: seed)")

    def default_density(self) -> float:
        return 0.5


class IteRandParams(EdgePopupParams):
    k_per: int = Field(300, ge=1, description="steps between randomisations")
    r: float = Field(0.1, ge=0, le=1, description="probability of redrawing each pruned weight")


EDGEPOPUP_DEFAULTS = {**LENET_MNIST5K, "train": {"optimizer": "sgd", "lr": 0.1, "momentum": 0.9,
                                                "weight_decay": 0.0005, "batch_size": 128,
                                                "duration": "10ep", "schedule": "cosine"}}


def layer_densities(p: EdgePopupParams, names: list[str]) -> dict[str, float]:
    out = {n: p.density for n in names}
    if p.first_layer_dense:
        out.pop(names[0])
    if p.last_layer_dense:
        out.pop(names[-1])
    return out


class IteRandHook(BaseHook):
    """Every k_per steps, redraw each pruned weight with probability r (from the event's seed)."""

    def __init__(self, p: IteRandParams, model, scored: dict, base_seed: int):
        self.p, self.model, self.scored, self.base_seed = p, model, scored, base_seed
        self.events: list[dict] = []
        self.redrawn: dict[str, torch.Tensor] = {}

    def after_step(self, state) -> None:
        if state.step % self.p.k_per or state.step >= state.total_steps:
            return
        index = len(self.events)
        seed = self.base_seed * EVENT_SEED_STRIDE + index + 1
        pruned = {n: ~pm.mask() for n, pm in self.scored.items()}
        for name, where in redraw(self.model, pruned, self.p.weight_init, self.p.r, seed).items():
            self.redrawn[f"event{index}.{name}"] = where
        self.events.append({"step": state.step, "seed": seed})


@torch.no_grad()
def redraw(model, candidates: dict[str, torch.Tensor], init: str, r: float, seed: int) -> dict:
    """Redraw each candidate weight with probability r; returns where it happened per layer."""
    g = torch.Generator().manual_seed(seed)
    out = {}
    for name, cand in candidates.items():
        w = sm.original(model, name) if _parametrized(model) else dict(model.named_parameters())[name]
        # Drawn on the CPU from the event's seed (the same values on any device), then moved.
        where = (torch.rand(w.shape, generator=g) < r) & cand.cpu()
        fresh = sm.draw(w.shape, init, g)
        w.copy_(torch.where(where.to(w.device), fresh.to(w.device, w.dtype), w))
        out[name] = where
    return out


def _parametrized(model) -> bool:
    from torch.nn.utils import parametrize
    return any(parametrize.is_parametrized(m, "weight") for m in model.modules())


def train_scores(p: EdgePopupParams, ctx: PruneContext, iterand: bool, label: str) -> PruneResult:
    model = ctx.model
    names = list(prunable_parameters(model))
    if not names:
        raise UserError(f"{label} needs a model with Linear or Conv layers")
    base_seed = ctx.seed if p.weight_seed is None else p.weight_seed
    weights = sm.draw_weights(model, names, p.weight_init, base_seed)
    with torch.no_grad():
        for n, w in weights.items():
            dict(model.named_parameters())[n].copy_(w)
    sm.freeze_extras(model)
    scored = sm.attach(model, layer_densities(p, names), base_seed + 1)
    hook = IteRandHook(p, model, scored, base_seed) if iterand else None
    history = fit(model, ctx.data, ctx.train, seed=ctx.seed, hooks=[hook] if hook else [],
                  params=[pm.scores for pm in scored.values()],
                  progress=label if ctx.progress else None)
    masks = sm.detach(model, scored)
    seeds = {"base_seed": base_seed, "weight_init": p.weight_init, "names": names,
             "scored": list(scored), "events": hook.events if hook else []}
    tensors = {"redrawn": hook.redrawn} if hook and hook.redrawn else {}
    full = MaskSet({n: masks[n] if n in masks else torch.ones_like(weights[n], dtype=torch.bool)
                    for n in names})
    return PruneResult(full, history, {"seeds": seeds}, tensors=tensors)


@torch.no_grad()
def rebuild(model, seeds: dict, redrawn: dict[str, torch.Tensor], masks: MaskSet) -> dict:
    """The masked frozen weights regenerated from the seeds (and the redrawn positions)."""
    weights = sm.draw_weights(model, seeds["names"], seeds["weight_init"], seeds["base_seed"])
    for index, event in enumerate(seeds["events"]):
        g = torch.Generator().manual_seed(event["seed"])
        for name in seeds["scored"]:  # the order redraw() consumed the generator in
            key = f"event{index}.{name}"
            torch.rand(weights[name].shape, generator=g)  # the draw that chose positions
            fresh = sm.draw(weights[name].shape, seeds["weight_init"], g)
            if key in redrawn:
                weights[name] = torch.where(redrawn[key], fresh, weights[name])
    return {n: w * masks[n] for n, w in weights.items()}


@register_method
class EdgePopup(Method):
    name = "edgepopup"
    summary = "edge-popup: train scores over frozen random weights, keep the top-k"
    Params = EdgePopupParams
    defaults = EDGEPOPUP_DEFAULTS
    test_settings = tiny(TINY_MLP, density=0.3)

    def check(self, p: EdgePopupParams, ctx: PruneContext) -> None:
        if not prunable_parameters(ctx.model):
            raise UserError(f"{self.name} needs a model with Linear or Conv layers")

    def run(self, p: EdgePopupParams, ctx: PruneContext) -> PruneResult:
        return train_scores(p, ctx, iterand=isinstance(p, IteRandParams), label=self.name)

    def verify_export(self, model, src, masks: MaskSet | None) -> None:
        """The stored weights must be exactly the ones rebuilt from the recorded seeds."""
        seeds = src.record.get("method_info", {}).get("seeds")
        if seeds is None:
            return
        redrawn = src.state("redrawn") if src.has("redrawn") else {}  # read_stage verified it
        params = dict(model.named_parameters())
        for name, w in rebuild(model, seeds, redrawn, masks).items():
            if not torch.equal(w, params[name].detach()):
                raise UserError(f"{name} in {src.dir} does not match the weights rebuilt from "
                                "its seeds; the stage folder was altered, re-run the prune stage")


# The paper's k_per = 300 is about one CIFAR-10 epoch; on the embedded default (mnist5k, batch
# 128, 28 steps per epoch) one epoch is 28 steps, which gives 9 randomisations in 10 epochs.
ITERAND_DEFAULTS = {**EDGEPOPUP_DEFAULTS, "method": {"k_per": 28}}


@register_method
class IteRand(EdgePopup):
    name = "iterand"
    summary = "IteRand: edge-popup plus periodic re-randomisation of pruned weights"
    Params = IteRandParams
    defaults = ITERAND_DEFAULTS
    test_settings = tiny(TINY_MLP, density=0.3, k_per=2)
