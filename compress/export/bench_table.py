"""The export table: what the structural shrink (and a reduced precision) buys, in one run.

Columns are ONNX files of the same network: "dense" (the masked model at its dense shapes),
"shrunk" (the deployed fp32 model) and, when one was chosen, the reduced-precision model.
Rows: params, MACs per sample, file bytes, onnxruntime latency at batch 1 and 16 (CPU
provider, 2 intra-op threads, no spinning, the models timed round-robin, medians) and the
test metrics onnxruntime scores.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from torch import nn

from compress.core.metrics import classification_metrics
from compress.core.structure import count_macs
from compress.export.onnx import ort_latencies, ort_session

EVAL_CHUNK = 4096  # samples per onnxruntime call when scoring a split (bounded memory)

LATENCY_BATCHES = (1, 16)
TIMING_THREADS = 2
METRIC_ROWS = ("test_accuracy", "test_auc")
LABELS = {"params": "params", "macs": "MACs / sample", "onnx_bytes": "file bytes",
          "latency_b1_ms": "latency b=1 (ms)", "latency_b16_ms": "latency b=16 (ms)",
          "test_accuracy": "test accuracy", "test_auc": "test auc"}


@dataclass
class Column:
    """One exported model: its file, the size of the torch module it came from, its metrics."""

    name: str
    path: Path
    params: int
    macs: int
    metrics: dict[str, float] = field(default_factory=dict)


def module_size(module: nn.Module, example: torch.Tensor) -> tuple[int, int]:
    """(stored parameters, MACs per sample) of a module."""
    return sum(p.numel() for p in module.parameters()), count_macs(module, example)


def ort_test_metrics(path: Path, split) -> dict[str, float]:
    """Metrics of the model as onnxruntime runs it on `split`: what a deployment would score."""
    sess = ort_session(path)
    name = sess.get_inputs()[0].name
    logits = np.concatenate([sess.run(None, {name: x.numpy()})[0]
                             for x, _ in split.chunks(EVAL_CHUNK)])
    metrics = classification_metrics(torch.from_numpy(logits).float(), split.labels)
    return {f"test_{k}": v for k, v in metrics.items() if k != "loss"}


def build_table(columns: Sequence[Column], in_shape: Sequence[int],
                rounds: int | None) -> dict:
    """The table as JSON-ready data; latencies only when `rounds` is given."""
    rows: dict[str, list] = {
        "params": [c.params for c in columns], "macs": [c.macs for c in columns],
        "onnx_bytes": [Path(c.path).stat().st_size for c in columns]}
    if rounds:
        for batch in LATENCY_BATCHES:
            seconds = ort_latencies([c.path for c in columns], batch, tuple(in_shape),
                                    repeats=rounds, threads=TIMING_THREADS)
            rows[f"latency_b{batch}_ms"] = [s * 1e3 for s in seconds]
    for key in METRIC_ROWS:
        if all(key in c.metrics for c in columns):
            rows[key] = [c.metrics[key] for c in columns]
    timing = {"provider": "CPUExecutionProvider", "intra_op_threads": TIMING_THREADS,
              "rounds": rounds, "statistic": "median", "order": "round-robin"} if rounds else None
    return {"columns": [c.name for c in columns], "rows": rows, "timing": timing}


def table_metrics(table: dict) -> dict[str, float]:
    """Flat `table.<column>.<row>` metrics (MLflow)."""
    return {f"table.{col}.{row}": float(values[i])
            for row, values in table["rows"].items() for i, col in enumerate(table["columns"])}


def ratio(table: dict, row: str, num: str, den: str) -> float | None:
    """row[num] / row[den]: e.g. the speedup of `den` over `num` on a latency row."""
    values = table["rows"].get(row)
    if values is None:
        return None
    cols = table["columns"]
    return values[cols.index(num)] / values[cols.index(den)]


def cell(row: str, value) -> str:
    return f"{value:.4f}" if row.startswith(("latency", "test_")) else f"{int(value):,}"


def to_markdown(table: dict) -> str:
    cols = table["columns"]
    lines = ["| | " + " | ".join(cols) + " |", "|---|" + "---:|" * len(cols)]
    for row, values in table["rows"].items():
        lines.append(f"| {LABELS.get(row, row)} | " + " | ".join(cell(row, v) for v in values)
                     + " |")
    t = table.get("timing")
    if t:
        lines.append("")
        lines.append(f"Latency: onnxruntime {t['provider']}, {t['intra_op_threads']} intra-op "
                     f"threads, no spinning, {t['rounds']} {t['order']} rounds, {t['statistic']}.")
    return "\n".join(lines) + "\n"
