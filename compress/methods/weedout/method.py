"""Weedout: random search over node masks at initialisation, then train the winner.

1. Load the dense INITIALISATION (ctx.init; the paper uses He-normal init, here each model keeps
   its own init, e.g. Glorot for lenet300 and conv2/4/6). Sample `population` node masks at node
   `density` (layer-wise: every maskable layer keeps exactly kept_count units; global: one count
   over all maskable units, each layer keeping >= 1; unstructured: random WEIGHT masks per layer
   instead, the paper's future-work option). A node mask multiplies a hidden unit's / conv
   channel's output by 0 or 1; the classifier's output layer is never masked.
2. Each generation: draw a fresh fitness batch (`fitness_batch` samples, seeded) from the
   selection part of the val split; fitness = -loss of every candidate on it, no training
   (`fitness_steps` > 0: each candidate is first trained that many steps with the train
   optimiser from the init; this costs population x fitness_steps training steps per generation,
   about as much as population x fitness_steps / steps-per-training full trainings).
   Selection: `random_search` keeps the single fittest and refills with population-1 fresh masks;
   `tournament` keeps the fittest (elitism of one) and fills the rest by binary tournaments (two
   candidates drawn at random with replacement, the fitter is copied) followed by mutation (each
   copy reshuffles `mutation` of its nodes, kept counts unchanged).
3. Stop after `generations`, or when for `patience` generations in a row no new candidate beat
   the incumbent best on that generation's batch (fitness on different batches is not comparable,
   so "improved" means "the incumbent was beaten on the same batch").
4. Convert the winning node mask to weight masks (the unit's incoming row / filter AND its
   outgoing column / input-channel slice in the next layer, so an MLP winner exports physically
   smaller), apply to the init weights, train for train.duration with the mask enforced.

A starting mask (pruning from an earlier prune stage) is applied to the init during the search
and intersected with the winner's weight masks. The pretrained weights in ctx.model are not used.

Cost of the default (LeNet-300-100, mnist5k, m = 100, G = 5, 1000 SGD iterations, one thread on
this 2-core machine while two benchmarks ran): search 0.6-0.7 s, winner training 4.3 s, control
training 4.7 s; winner 94.8% test accuracy at node sparsity 0.5 (dense 95.0%).

Control (`control`): a random member of the FIRST population, trained the same way (same init,
same data order). Because most of the fitness gain of a searched mask is trivial (shrunken
logits pull the initial loss toward ln C) and selection on a batch overfits that batch, the
winner's, the control's and the first population's fitness are also scored on `heldout` of the
val split that selection never sees (METHODS.md, Weedout calibration).

Evaluation of a population: stacked. The fitness batch runs once through the unmasked prefix;
forward hooks expand it to one copy per candidate at the first maskable layer and multiply each
maskable layer's output by per-sample masks (node_masks.py beside this file). Measured on
LeNet-300-100, m = 100, B = 256, this loaded 2-core machine: 0.3-0.5 s per population stacked
vs 3.1-3.6 s for one candidate at a time through the same hooks. Unstructured masks are
evaluated one candidate at a time with torch.func.functional_call on masked weights (no copy of
the network). Fitness is measured in eval mode (BatchNorm uses its running statistics).
Under torchrun the population is split across ranks (`_Scorer`); masks and fitness batches are
drawn from the same seeds on every rank, so selection is identical everywhere.
"""

from __future__ import annotations

import copy
import math
import time
from typing import Literal

import torch
from pydantic import Field

from compress.core import dist
from compress.core.loop import evaluate, fit
from compress.core.masking import MaskEnforcer, apply_masks, prunable_parameters
from compress.core.masks import MaskSet
from compress.errors import UserError
from compress.methods.base import DensityTarget, Method, PruneContext, PruneResult
from compress.methods.presets import LENET_MNIST5K, TINY_MLP, tiny
from compress.methods.weedout import node_masks as nm
from compress.registry import register_method

# Embedded default: LeNet-300-100 on the 5k MNIST subset, trained with SGD as in the paper.
WEEDOUT_DEFAULTS = {**LENET_MNIST5K,
                    "train": {"optimizer": "sgd", "lr": 0.05, "momentum": 0.9, "batch_size": 60,
                              "duration": "1000it", "weight_decay": 0.0}}
MASK_SEED, BATCH_SEED = 0x5EED, 0xBA7C  # offsets from ctx.seed: mask draws, fitness batches


class WeedoutParams(DensityTarget):
    """`density` / `sparsity`: fraction of NODES (units, channels) kept / removed per maskable
    layer (layerwise), over all of them (global), or of weights per layer (unstructured)."""

    density: float | None = Field(None, gt=0, lt=1, description="fraction of nodes KEPT")
    sparsity: float | None = Field(None, gt=0, lt=1,
                                   description="fraction of nodes REMOVED (eta; default 0.5)")
    population: int = Field(100, ge=2, description="m: candidate masks per generation")
    generations: int = Field(5, ge=1, description="G: at most this many generations")
    fitness_batch: int = Field(256, ge=1, description="val samples per generation's fitness batch")
    fitness_steps: int = Field(0, ge=0, description="train each candidate this many steps before "
                                                    "scoring (slow: population x steps per gen)")
    selection: Literal["random_search", "tournament"] = "random_search"
    mutation: float = Field(0.1, gt=0, le=1, description="tournament: share of nodes reshuffled")
    patience: int = Field(2, ge=0, description="stop after this many generations without a new "
                                                "best (0: always run all generations)")
    scope: Literal["layerwise", "global", "unstructured"] = "layerwise"
    control: bool = Field(True, description="also train a random first-population mask")
    heldout: float = Field(0.25, ge=0, lt=1, description="share of the val split kept out of "
                                                          "selection to score winner and control")

    def default_density(self) -> float:
        return 0.5


# ------------------------------------------------------------------------- search spaces
class NodeSpace:
    """Populations of node masks (name -> bool [m, units]), evaluated stacked through hooks."""

    def __init__(self, model, p: WeedoutParams):
        self.model, self.p = model, p
        self.layers = nm.require_layers(model)

    def sample(self, m: int, gen) -> dict:
        return nm.sample(self.layers, m, self.p.density, self.p.scope, gen)

    def mutate(self, pop: dict, gen) -> dict:
        return nm.mutate(self.layers, pop, self.p.mutation, self.p.scope, gen)

    def weights(self, cand: dict) -> MaskSet:
        return nm.node_to_weight_masks(self.model, self.layers, cand)

    def losses(self, pop: dict, x, y) -> torch.Tensor:
        with nm.NodeMaskHooks(self.layers) as hooks:
            return nm.population_losses(self.model, hooks, pop, x, y)

    def kept(self, cand: dict) -> dict:
        return {n.removesuffix(".weight"): int(v.sum()) for n, v in cand.items()}


class WeightSpace:
    """Populations of random weight masks (name -> bool [m, *shape]) for every prunable layer
    but the output layer, exactly kept_count weights per layer; evaluated one at a time."""

    def __init__(self, model, p: WeedoutParams):
        self.model, self.p = model, p
        params = prunable_parameters(model)
        self.names = list(params)[:-1]
        if not self.names:
            nm.require_layers(model)  # raises the one-line "nothing to mask" error
        self.shapes = {n: params[n].shape for n in self.names}

    def sample(self, m: int, gen) -> dict:
        out = {}
        for n in self.names:
            size = math.prod(self.shapes[n])
            order = torch.rand(m, size, generator=gen).argsort(dim=1, stable=True)
            mask = torch.zeros(m, size, dtype=torch.bool)
            mask.scatter_(1, order[:, :nm.kept_count(size, self.p.density)], True)
            out[n] = mask.view(m, *self.shapes[n])
        return out

    def mutate(self, pop: dict, gen) -> dict:
        return {n: nm.permute_subsets(v.flatten(1), self.p.mutation, gen).view_as(v)
                for n, v in pop.items()}

    def weights(self, cand: dict) -> MaskSet:
        params = prunable_parameters(self.model)
        return MaskSet({n: cand[n].clone() if n in cand else torch.ones(p.shape, dtype=torch.bool)
                        for n, p in params.items()})

    @torch.no_grad()
    def losses(self, pop: dict, x, y) -> torch.Tensor:
        params = prunable_parameters(self.model)
        was_training = self.model.training
        self.model.eval()
        out = []
        try:
            for i in range(nm.size(pop)):
                masked = {n: params[n] * pop[n][i].to(params[n].dtype) for n in pop}
                logits = torch.func.functional_call(self.model, masked, (x,))
                out.append(nm.candidate_losses(logits[None], y))
        finally:
            self.model.train(was_training)
        return torch.cat(out)

    def kept(self, cand: dict) -> dict:
        return {n.removesuffix(".weight"): int(v.sum()) for n, v in cand.items()}


def make_space(model, p: WeedoutParams):
    return WeightSpace(model, p) if p.scope == "unstructured" else NodeSpace(model, p)


# ------------------------------------------------------------------------- helpers
def _split_val(n: int, heldout: float, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(selection pool, held-out) indices of the val split, fixed by the seed."""
    order = torch.randperm(n, generator=torch.Generator().manual_seed(seed + BATCH_SEED))
    k = int(heldout * n + 0.5) if heldout > 0 else 0
    return order[k:], order[:k]


def _init_state(ctx: PruneContext) -> dict:
    if ctx.init is not None:
        return ctx.init
    if ctx.build is None:
        raise UserError("weedout needs the dense initialisation (a pretrain stage's init.pt)")
    return ctx.build(0).state_dict()


def _start(model, init: dict, masks: MaskSet) -> None:
    model.load_state_dict(init)
    apply_masks(model, masks)


def _intersect(a: MaskSet, b: MaskSet) -> MaskSet:
    return MaskSet({n: m & b[n] if n in b else m for n, m in a.items()})


def check(p: WeedoutParams, ctx: PruneContext) -> None:
    """Refuse what only the model and data can judge: nothing to mask, non-chain nets (node
    scopes), a val split too small to hold out and select on."""
    space = make_space(ctx.model, p)
    if isinstance(space, NodeSpace):
        nm.check_chain(ctx.model, space.layers, ctx.data.val.head(8))
    pool, _ = _split_val(len(ctx.data.val), p.heldout, ctx.seed)
    if len(pool) < 1:
        raise UserError(f"method.heldout={p.heldout} leaves no val samples for selection "
                        f"(val has {len(ctx.data.val)}); lower it")


class _Scorer:
    """Fitness of a population: -loss on (x, y), optionally after fitness_steps of training.

    Under torchrun each rank scores a contiguous slice of the population (fitness training
    included, on its own) and every rank gets all scores in population order, so every rank
    selects the same winner.
    """

    def __init__(self, space, p: WeedoutParams, ctx: PruneContext, init: dict):
        self.space, self.p, self.ctx, self.init = space, p, ctx, init
        self.work = copy.deepcopy(ctx.model) if p.fitness_steps else None

    def __call__(self, pop: dict, x, y) -> torch.Tensor:
        return dist.gather_map(lambda s: self._score({n: v[s] for n, v in pop.items()}, x, y),
                               nm.size(pop))

    def _score(self, pop: dict, x, y) -> torch.Tensor:
        if not self.p.fitness_steps:
            return -self.space.losses(pop, x, y)
        out = []
        for i in range(nm.size(pop)):
            masks = _intersect(self.space.weights({n: v[i] for n, v in pop.items()}),
                               self.ctx.masks)
            _start(self.work, self.init, masks)
            fit(self.work, self.ctx.data, self.ctx.train, seed=self.ctx.seed,
                masks=MaskEnforcer(masks), duration=f"{self.p.fitness_steps}it")
            with torch.no_grad():
                self.work.eval()
                out.append(-nm.candidate_losses(self.work(x)[None], y))
        return torch.cat(out)


def _train(model, masks: MaskSet, ctx: PruneContext, init: dict, label: str):
    """Train `masks` from the init for train.duration; (history, test/val metrics, seconds)."""
    started = time.perf_counter()
    _start(model, init, masks)
    history = fit(model, ctx.data, ctx.train, seed=ctx.seed, masks=MaskEnforcer(masks),
                  progress=label if ctx.progress else None)
    seconds = time.perf_counter() - started
    metrics = {f"test_{k}": v for k, v in evaluate(model, ctx.data.test).items()}
    metrics.update({f"val_{k}": v for k, v in evaluate(model, ctx.data.val).items()})
    return history, metrics, seconds


# ------------------------------------------------------------------------- the method
@register_method
class Weedout(Method):
    name = "weedout"
    summary = "random search over node masks at init (Weedout), then train the winner"
    Params = WeedoutParams
    defaults = WEEDOUT_DEFAULTS
    test_settings = tiny(TINY_MLP, density=0.3, population=8, generations=2, fitness_batch=64)

    def check(self, p: WeedoutParams, ctx: PruneContext) -> None:
        check(p, ctx)

    def run(self, p: WeedoutParams, ctx: PruneContext) -> PruneResult:
        return weedout(p, ctx)


def weedout(p: WeedoutParams, ctx: PruneContext) -> PruneResult:
    check(p, ctx)
    init = _init_state(ctx)
    model = ctx.model
    _start(model, init, ctx.masks)
    space = make_space(model, p)
    score = _Scorer(space, p, ctx, init)
    mask_gen = torch.Generator().manual_seed(ctx.seed + MASK_SEED)
    batch_gen = torch.Generator().manual_seed(ctx.seed + BATCH_SEED + 1)
    val = ctx.data.val
    pool, held = _split_val(len(val), p.heldout, ctx.seed)
    m = p.population

    started = time.perf_counter()
    callback_seconds = 0.0
    pop = space.sample(m, mask_gen)
    first = pop
    born = torch.ones(m, dtype=torch.long)
    control_index = int(torch.randint(m, (1,), generator=mask_gen))
    rows, stale, winner, winner_fit, control_fit = [], 0, None, None, None
    for g in range(1, p.generations + 1):
        idx = pool if len(pool) <= p.fitness_batch else \
            pool[torch.randperm(len(pool), generator=batch_gen)[:p.fitness_batch]]
        fitness = score(pop, *val.take(idx))
        best = int(torch.argmax(fitness))  # first maximum: ties keep the incumbent (index 0)
        improved = g == 1 or best != 0
        stale = 0 if improved else stale + 1
        if g == 1:
            control_fit = float(fitness[control_index])
        winner = {n: v[best].clone() for n, v in pop.items()}
        winner_fit = float(fitness[best])
        row = {"generation": g, "best_fitness": winner_fit, "mean_fitness": float(fitness.mean()),
               "std_fitness": float(fitness.std()) if m > 1 else 0.0,
               "incumbent_fitness": float(fitness[0]) if g > 1 else None,
               "improved": bool(improved), "best_born": int(born[best]), "batch": len(idx)}
        rows.append(row)
        if ctx.on_round is not None:
            t = time.perf_counter()
            ctx.on_round(g, _intersect(space.weights(winner), ctx.masks),
                         {k: row[k] for k in ("best_fitness", "mean_fitness", "generation")}, [])
            callback_seconds += time.perf_counter() - t
        if g == p.generations or (p.patience and stale >= p.patience):
            break
        pop, born = _next_population(space, p, pop, fitness, best, born, g + 1, mask_gen)

    # Fitness on val samples selection never saw: winner, control, and the first population.
    heldout = {}
    if len(held):
        if p.fitness_steps:
            both = nm.concat(nm.take(first, [control_index]),
                             {n: v[None] for n, v in winner.items()})
            h = score(both, *val.take(held))
            heldout = {"control": float(h[0]), "winner": float(h[1])}
        else:
            h = score(nm.concat(first, {n: v[None] for n, v in winner.items()}),
                      *val.take(held))
            heldout = {"control": float(h[control_index]), "winner": float(h[-1]),
                       "population_mean": float(h[:m].mean()), "population_std": float(h[:m].std())}
    search_seconds = time.perf_counter() - started - callback_seconds

    winner_masks = _intersect(space.weights(winner), ctx.masks)
    control_info = {}
    control_seconds = 0.0
    if p.control:
        control_nodes = {n: v[control_index].clone() for n, v in first.items()}
        control_masks = _intersect(space.weights(control_nodes), ctx.masks)
        _, metrics, control_seconds = _train(copy.deepcopy(model), control_masks, ctx, init,
                                             "weedout control")
        control_info = {"index": control_index, "fitness": control_fit,
                        "heldout_fitness": heldout.get("control"),
                        "is_winner": all(torch.equal(control_nodes[n], winner[n]) for n in winner),
                        "kept": space.kept(control_nodes),
                        "weight_density": control_masks.density(), **metrics}
    history, metrics, train_seconds = _train(model, winner_masks, ctx, init, "weedout")
    winner_info = {"fitness": winner_fit, "heldout_fitness": heldout.get("winner"),
                   "born": rows[-1]["best_born"], "kept": space.kept(winner),
                   "weight_density": winner_masks.density(), **metrics}
    info = {"scope": p.scope, "selection": p.selection, "node_density": p.density,
            "population": m, "generations_run": len(rows),
            "stopped_early": len(rows) < p.generations, "generations": rows,
            "winner": winner_info, "control": control_info,
            "heldout": {"samples": len(held), **heldout},
            "search_seconds": round(search_seconds, 3), "train_seconds": round(train_seconds, 3),
            "control_seconds": round(control_seconds, 3),
            "init": "the model's own initialisation (the paper: He normal)"}
    if p.control:
        info["winner_minus_control_test_accuracy"] = \
            winner_info["test_accuracy"] - control_info["test_accuracy"]
    return PruneResult(winner_masks, history, info)


def _next_population(space, p: WeedoutParams, pop: dict, fitness: torch.Tensor, best: int,
                     born: torch.Tensor, g: int, gen) -> tuple[dict, torch.Tensor]:
    """The incumbent at index 0, then m-1 fresh masks (random_search) or mutated tournament
    winners (tournament)."""
    m = nm.size(pop)
    elite = nm.take(pop, [best])
    if p.selection == "random_search":
        rest = space.sample(m - 1, gen)
    else:
        pairs = torch.randint(m, (m - 1, 2), generator=gen)
        a, b = pairs[:, 0], pairs[:, 1]
        parents = torch.where(fitness[a] >= fitness[b], a, b)
        rest = space.mutate(nm.take(pop, parents), gen)
    return nm.concat(elite, rest), torch.cat([born[best:best + 1], torch.full((m - 1,), g)])

