"""What commands print: one JSON object (--json) or a rich summary table."""

from __future__ import annotations

import json
import math
from pathlib import Path


def strict_json(value) -> str:
    """JSON as every parser reads it: NaN and ±inf (a metric that is undefined) become null,
    anything else non-JSON becomes its string."""
    return json.dumps(_finite(value), default=str, allow_nan=False)


def _finite(value):
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite(v) for v in value]
    return value


def _artifacts(record: dict) -> dict[str, str]:
    root = Path(record["out_dir"])
    files = {k: str((root / v).resolve()) for k, v in record.get("files", {}).items()}
    return {"dir": str(root.resolve()), **files}


def stage_json(record: dict) -> dict:
    out = {k: record.get(k) for k in ("run_id", "stage", "method", "metrics", "density")}
    out["artifacts"] = _artifacts(record)
    out["reused"] = bool(record.get("reused"))  # a resumed pipeline's finished stage
    for key in ("registered", "structure", "pruning", "dense_metrics", "mode", "curve",
                "export_table", "deployment", "model_ref", "imported", "data_fingerprint",
                "data_facts", "raw_inputs"):
        if key in record:
            out[key] = record[key]
    return out


def chain_json(result: dict, main: str | None) -> dict:
    """The main stage's summary, with every stage's artifacts and the parent run id."""
    stages = result["stages"]
    head = stages[main] if main in stages else list(stages.values())[-1]
    out = stage_json(head)
    for sid, rec in stages.items():
        for k, v in _artifacts(rec).items():
            out["artifacts"].setdefault(k if k != "dir" else f"{sid}_dir", v)
            out["artifacts"][f"{sid}_dir"] = _artifacts(rec)["dir"]
    out["pipeline_run_id"] = result["run_id"]
    out["stages"] = {sid: stage_json(rec) for sid, rec in stages.items()}
    export = next((r for r in stages.values() if r["stage"] == "export"), None)
    if export is not None:
        out["export_metrics"] = export["metrics"]
        for key in ("export_table", "deployment"):
            if key in export:
                out[key] = export[key]
        if "registered" in export:
            out["registered"] = export["registered"]
    return out


def _fmt(v) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        return f"{v:.4f}"
    return f"{v:,}" if isinstance(v, int) else str(v)


def _counts(structure: dict | None, key: str) -> tuple:
    """(kept, total) of one structure entry; for connections the live count where there is one
    (constant and dead units' connections compute nothing that depends on the input)."""
    s = (structure or {}).get(key) or {}
    return s.get("live", s.get("kept")), s.get("total")


def stage_table(record: dict, dense: dict | None = None) -> None:
    from rich.console import Console
    from rich.table import Table

    dense = dense or record.get("dense_metrics")
    metrics = record.get("metrics", {})
    t = Table(title=f"{record['stage']}{':' + record['method'] if record.get('method') else ''}")
    t.add_column("")
    if dense:
        t.add_column("dense", justify="right")
    t.add_column(record["stage"], justify="right")
    for key in ("test_auc", "test_accuracy", "val_auc", "val_accuracy", "parity_rel_error",
                "onnx_test_auc", "onnx_test_accuracy"):
        if key in metrics:
            t.add_row(key.replace("_", " "), *([_fmt(dense.get(key))] if dense else []),
                      _fmt(metrics[key]))
    live = "live" in ((record.get("structure") or {}).get("connections") or {})
    for key, label in (("connections", "live connections" if live else "connections kept"),
                       ("hidden_units", "hidden units kept"),
                       ("input_features", "input features kept"), ("channels", "channels kept")):
        kept, total = _counts(record.get("structure"), key)
        if kept is not None:
            t.add_row(label, *([_fmt(total)] if dense else []), _fmt(kept))
    t.add_row("density", *(["1.0000"] if dense else []), _fmt(record.get("density")))
    pruning = record.get("pruning")
    for key, label in (("channel_sparsity", "channel sparsity"), ("heads_sparsity",
                                                                   "head sparsity")):
        if pruning and key in pruning["achieved"]:
            t.add_row(f"{label} (asked {pruning['requested'][key]:.2f})",
                      *(["0.0000"] if dense else []), _fmt(pruning["achieved"][key]))
    if pruning:
        t.add_row("MACs ratio (dense / pruned)", *(["1.00x"] if dense else []),
                  f"{pruning['achieved']['macs_ratio']:.2f}x")
    console = Console()
    console.print(t)
    if pruning and pruning.get("note"):
        console.print(f"[yellow]not as asked[/yellow]  {pruning['note']}")
    export_details(console, record)
    console.print(f"output  {record['out_dir']}")
    console.print(f"run id  {record['run_id']}  ({record.get('tracking')})")


def export_details(console, record: dict) -> None:
    """The export table (dense vs shrunk vs reduced precision) and where it can be deployed."""
    from rich.table import Table

    from compress.export.bench_table import LABELS, cell
    table, dep = record.get("export_table"), record.get("deployment")
    if not table:
        return
    t = Table(title="export: dense vs shrunk" + (f" vs {dep['precision']}" if dep and
                                                 dep["precision"] != "fp32" else ""))
    t.add_column("")
    for col in table["columns"]:
        t.add_column(col, justify="right")
    for row, values in table["rows"].items():
        t.add_row(LABELS.get(row, row), *(cell(row, v) for v in values))
    console.print(t)
    timing = table.get("timing")
    if timing:
        console.print(f"latency: median of {timing['rounds']} round-robin runs "
                      f"({timing['provider']}, {timing['intra_op_threads']} threads)")
    if dep:
        m = record["metrics"]
        if dep["precision"] != "fp32":
            speed = ", ".join(f"b={b} x{m[k]:.2f}" for b in (1, 16)
                              if (k := f"precision_speedup_b{b}") in m)
            console.print(f"{dep['precision']}: test accuracy change "
                          f"{m['precision_accuracy_change']:+.4f} vs fp32"
                          + (f", speedup {speed}" if speed else ""))
        missing = dep.get("unavailable_here") or []
        console.print(f"providers  {', '.join(dep['providers'])}")
        console.print(f"checks ran on {dep['checked_on']}" + (
            f"; not available here (recorded for deployment): {', '.join(missing)}"
            if missing else ""))


def chain_table(result: dict, main: str | None) -> None:
    from rich.console import Console
    stages = result["stages"]
    head = stages[main] if main in stages else None
    export = next((r for r in stages.values() if r["stage"] == "export"), None)
    console = Console()
    if head is not None:
        stage_table(head)
    else:
        for rec in stages.values():
            console.print(f"{rec['stage']:<9} {rec.get('method') or '':<10} "
                          f"{_headline(rec)}  {rec['out_dir']}  run {rec['run_id']}")
    if export is not None:
        onnx = Path(export["out_dir"]) / export["files"]["onnx"]
        m = export["metrics"]
        precision = (export.get("deployment") or {}).get("precision", "fp32")
        console.print(f"ONNX    {onnx}  ({'' if precision == 'fp32' else precision + ', '}"
                      f"{int(m['onnx_bytes']):,} bytes, {'' if precision == 'fp32' else 'fp32 '}"
                      f"parity rel. error {m['parity_rel_error']:.2e})")
        if head is not export:
            export_details(console, export)
        if "registered" in export:
            r = export["registered"]
            console.print(f"registry  {r['name']} version {r['version']} @{r['alias']}")
    console.print(f"pipeline run id  {result['run_id']}")


def _headline(rec: dict) -> str:
    m = rec.get("metrics", {})
    key = "test_auc" if "test_auc" in m else "test_accuracy" if "test_accuracy" in m else None
    return f"{key} {m[key]:.4f} density {rec.get('density', 1):.4f}" if key else \
        f"density {rec.get('density', 1):.4f}"
