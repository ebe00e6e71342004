"""Latency-aware widths (`export.round: latency`): per channel group, the kept width that
onnxruntime runs fastest on this machine.

Rounding every group to one multiple (export.round_to) is a compromise: depthwise-heavy
groups may run best at a multiple of 16 (onnxruntime's blocked conv kernels), others at their
exact width. Here each group may pick its own width among its exact width and the next
multiples of 8 and 16 (never below its live units, so the function is unchanged: the extra
units are dead). The search measures the whole model, not a per-layer table, because
onnxruntime's layout changes between layers cost time a single-layer benchmark never sees:

  1. start from the fastest uniform rounding (exact, 8 or 16), timed round-robin;
  2. for the groups with the most MACs, try each other width of the group and keep it when the
     model runs at least `margin` faster (paired, round-robin medians).
"""

from __future__ import annotations

import copy
import math
import tempfile
from pathlib import Path

import torch
from torch import nn

from compress.core.widths import Widths

MULTIPLES = (1, 8, 16)


def _up(n: int, size: int, multiple: int) -> int:
    return min(size, math.ceil(max(n, 1) / multiple) * multiple)


def measured_widths(model: nn.Module, masks, example: torch.Tensor, rounds: int = 5,
                    threads: int = 2, batch: int = 16, max_groups: int = 16,
                    margin: float = 0.02, opset: int | None = None) -> Widths:
    """A widths rule (compress.core.widths) that times candidates of the masked `model`."""
    def choose(groups, alive, up) -> dict[str, int]:
        from compress.core.channels import channel_graph, removal
        from compress.core.masking import apply_masks
        from compress.core.surgery import cut
        from compress.core.widths import unit_macs
        from compress.export.onnx import export_onnx, ort_latencies
        ref = copy.deepcopy(model).eval()
        apply_masks(ref, masks or {})
        graph = channel_graph(ref, example)
        by_name = {g.name: g for g in groups}
        live = {g.name: int(alive[g.name].sum()) for g in groups}

        def build(widths: dict[str, int], path: Path) -> Path:
            net = copy.deepcopy(ref)
            cut(net, graph, {n: removal(by_name[n], ~alive[n], w) for n, w in widths.items()})
            return export_onnx(net, example, path, opset=opset)

        with tempfile.TemporaryDirectory(prefix="compress-latency-") as scratch:
            tmp = Path(scratch)
            uniform = [{g.name: _up(live[g.name], g.size, m) for g in groups} for m in MULTIPLES]
            paths = [build(w, tmp / f"u{m}.onnx") for w, m in zip(uniform, MULTIPLES)]
            secs = ort_latencies(paths, batch, tuple(example.shape[1:]), repeats=rounds,
                                 threads=threads, warmup=2)
            best = min(range(len(secs)), key=secs.__getitem__)
            current, current_path = dict(uniform[best]), paths[best]
            cost = unit_macs(ref, example, groups)
            order = sorted(groups, key=lambda g: -cost[g.name] * g.size)[:max_groups]
            trial = 0
            for g in order:
                options = sorted({_up(live[g.name], g.size, m) for m in MULTIPLES})
                for w in options:
                    if w == current[g.name]:
                        continue
                    trial += 1
                    candidate = {**current, g.name: w}
                    path = build(candidate, tmp / f"t{trial}.onnx")
                    t_cur, t_new = ort_latencies([current_path, path], batch,
                                                 tuple(example.shape[1:]), repeats=rounds,
                                                 threads=threads, warmup=2)
                    if t_new < (1 - margin) * t_cur:
                        current, current_path = candidate, path
        return current
    return choose
