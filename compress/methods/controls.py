"""Where a retrained sub-network starts: the one place that defines every retrain mode.

Used by the retrain stage and by IMP's per-round controls, so a control means the same
thing everywhere:
  finetune      trained weights, same mask
  rewind        weights at the rewind point (init, or step k of dense training), same mask
  reinit        a fresh random init, same mask                     (CPNA(random), random reinit)
  scratch_e     = reinit, same training budget                      (Liu et al. Scratch-E)
  scratch_b     = reinit, budget x FLOPs(dense) / FLOPs(pruned)     (Liu et al. Scratch-B)
  random_prune  a random mask with the same per-layer kept counts, weights at the rewind point
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Literal

import torch
from torch import nn

from compress.core import scoring
from compress.core.flops import layer_macs, sparse_macs
from compress.core.loop import fit
from compress.core.masks import MaskSet
from compress.core.schedules import parse_duration, steps_per_epoch
from compress.errors import UserError
from compress.vocab import RetrainMode

REINIT_OFFSET = 7919  # seed offset of a fresh init, distinct from the original init


@dataclass
class Start:
    model: nn.Module
    masks: MaskSet
    duration: str
    info: dict


def prepare(mode: RetrainMode, *, build: Callable[[int], nn.Module], masks: MaskSet,
            trained: dict[str, torch.Tensor] | None, rewound: dict[str, torch.Tensor] | None,
            duration: str, example: torch.Tensor, seed: int,
            scope: Literal["layerwise", "global"] = "layerwise",
            dense_macs: float | None = None) -> Start:
    """The model, mask and training budget a retrain in `mode` starts from (`dense_macs`: the
    dense model's MACs when `build` gives a physically pruned one)."""
    fresh = mode in ("reinit", "scratch_e", "scratch_b")
    model = build(REINIT_OFFSET if fresh else 0)
    if not fresh:
        state = trained if mode == "finetune" else rewound
        if state is None:
            raise UserError(f"retrain mode {mode} needs saved weights the source does not have")
        model.load_state_dict(state)
    info: dict = {"mode": mode}
    if mode == "random_prune":
        masks = scoring.random_like(masks, seed + REINIT_OFFSET, scope)
    if mode == "scratch_b":
        macs = layer_macs(model, example)
        ratio = (dense_macs or sparse_macs(macs, None)) / max(sparse_macs(macs, masks), 1.0)
        duration = scale_duration(duration, ratio)
        info.update(flops_ratio=ratio, duration=duration)
    return Start(model, masks, duration, info)


def scale_duration(duration: str, factor: float) -> str:
    d = parse_duration(duration)
    return f"{max(1, math.ceil(d.amount * factor))}{d.unit}"


def rewind_state(build: Callable[[int], nn.Module], init: dict[str, torch.Tensor], point: str,
                 data, train_cfg, seed: int) -> dict[str, torch.Tensor]:
    """Weights at `point` of dense training ('0it' is the init), replayed from the init.

    Dense training is deterministic given the seed, so replaying its first k steps reproduces
    the weights it had at step k without storing a checkpoint per possible rewind point.
    """
    k = rewind_steps(point, data, train_cfg)
    if k == 0:
        return {n: t.clone() for n, t in init.items()}
    model = build(0)
    model.load_state_dict(init)
    fit(model, data, train_cfg, seed=seed, duration=f"{k}it")
    return {n: t.detach().clone() for n, t in model.state_dict().items()}


def rewind_steps(point: str, data, train_cfg) -> int:
    """Steps of dense training before the rewind point; refused if past the end of training."""
    if train_cfg is None:  # an imported model: its weights are the only point we have
        if parse_duration(point).amount:
            raise UserError(f"rewind point {point}: the source model was imported trained, so "
                            "its training cannot be replayed; rewind to '0it' (the imported "
                            "weights) or retrain with --mode finetune")
        return 0
    spe = steps_per_epoch(len(data.train), train_cfg.batch_size)
    k = parse_duration(point).steps(spe)
    total = parse_duration(train_cfg.duration).steps(spe)
    if k > total:
        raise UserError(f"rewind point {point} ({k} steps) is after the end of dense training "
                        f"({train_cfg.duration} = {total} steps); use an earlier point")
    return k
