"""What commands print: one JSON object (--json) or a rich summary table."""

from __future__ import annotations

from pathlib import Path


def _artifacts(record: dict) -> dict[str, str]:
    root = Path(record["out_dir"])
    files = {k: str((root / v).resolve()) for k, v in record.get("files", {}).items()}
    return {"dir": str(root.resolve()), **files}


def stage_json(record: dict) -> dict:
    out = {k: record.get(k) for k in ("run_id", "stage", "method", "metrics", "density")}
    out["artifacts"] = _artifacts(record)
    out["reused"] = bool(record.get("reused"))  # a resumed pipeline's finished stage
    for key in ("registered", "structure", "dense_metrics", "mode", "curve"):
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
    s = (structure or {}).get(key) or {}
    return s.get("kept"), s.get("total")


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
    for key, label in (("connections", "connections kept"), ("hidden_units", "hidden units kept"),
                       ("input_features", "input features kept")):
        kept, total = _counts(record.get("structure"), key)
        if kept is not None:
            t.add_row(label, *([_fmt(total)] if dense else []), _fmt(kept))
    t.add_row("density", *(["1.0000"] if dense else []), _fmt(record.get("density")))
    console = Console()
    console.print(t)
    console.print(f"output  {record['out_dir']}")
    console.print(f"run id  {record['run_id']}  ({record.get('tracking')})")


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
        console.print(f"ONNX    {onnx}  ({int(m['onnx_bytes']):,} bytes, parity rel. error "
                      f"{m['parity_rel_error']:.2e})")
        if "registered" in export:
            r = export["registered"]
            console.print(f"registry  {r['name']} version {r['version']} @{r['alias']}")
    console.print(f"pipeline run id  {result['run_id']}")


def _headline(rec: dict) -> str:
    m = rec.get("metrics", {})
    key = "test_auc" if "test_auc" in m else "test_accuracy" if "test_accuracy" in m else None
    return f"{key} {m[key]:.4f} density {rec.get('density', 1):.4f}" if key else \
        f"density {rec.get('density', 1):.4f}"
