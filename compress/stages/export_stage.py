"""Export: the masked model, structurally shrunk, to ONNX; parity-gated; optionally registered."""

from __future__ import annotations

import json
import math
import shutil
import tempfile
from pathlib import Path

import torch

from compress import interrupts
from compress.config import Config
from compress.core.masking import apply_masks
from compress.errors import Interrupted, UserError
from compress.stages.artifacts import StageInfo
from compress.stages.runner import StageEnv, Work, architecture, build, load_data, run_stage

ONNX_FILE = "model.onnx"  # the deployed model, in export.precision
FP32_FILE = "model.fp32.onnx"  # the fp32 model it was derived from (precision != fp32 only)
TABLE_JSON, TABLE_MD = "export_table.json", "export_table.md"


def export(cfg: Config, src: StageInfo, env: StageEnv, out: Path | None = None) -> dict:
    if not src.has("weights"):
        raise UserError(f"{src.dir} ({src.stage}) has no weights to export")
    if cfg.export.registry_name:  # a registration that must fail does so before any work
        env.tracker.check_register(cfg.export.registry_name, cfg.export.alias)
    data = load_data(cfg)
    model = build(cfg, data, architecture=architecture(src))
    model.load_state_dict(src.state("weights", like=model))
    masks = src.masks(like=model)
    if masks is not None:
        apply_masks(model, masks)
    model.eval()
    method = src.record.get("method")
    if method:  # the producing method may refuse (e.g. weights that must rebuild from seeds)
        from compress.registry import METHODS
        METHODS.get(method).obj.verify_export(model, src, masks)
    record = run_stage("export", cfg, env,
                       lambda tmp: _export_files(cfg, model, masks, src, data, tmp),
                       src=src, out=out, method=src.record.get("method"))
    if cfg.export.registry_name:
        try:
            record["registered"] = _register(cfg, env, src, record, data)
        except BaseException:
            # With --register the stage is done only once registered: its folder goes, so a
            # re-run exports and registers again instead of reusing an unregistered export.
            shutil.rmtree(record["out_dir"], ignore_errors=True)
            raise
    return record


def _export_files(cfg: Config, model, masks, src: StageInfo, data, tmp: Path) -> Work:
    """fp32 ONNX (parity-gated), the reduced-precision copy (accuracy-gated), the table."""
    from compress.export.bench_table import Column, module_size, ort_test_metrics, to_markdown
    from compress.export.onnx import check_parity, export_onnx
    ex = cfg.export
    deploy, spec = _deployable(cfg, model, masks, data.test.head(2))
    meta = _metadata(src, spec, data, ex.providers)
    fp32 = tmp / (ONNX_FILE if ex.precision == "fp32" else FP32_FILE)
    export_onnx(deploy, data.test.head(2), fp32, metadata={**meta, "compress.precision": "fp32"},
                opset=ex.opset, exporter=ex.exporter)
    parity_x = data.test.head(ex.parity_samples)
    # The masked model, or (widths rounded down) that model without the live units it lost.
    from compress.core.shrink import reference
    ref = reference(model, spec, data.test.head(2))
    metrics = {"parity_rel_error": check_parity(fp32, ref, parity_x, rtol=ex.rtol)}
    shrunk = deploy is not model
    example = data.test.head(1)
    columns = [Column("shrunk" if shrunk else "dense", fp32, *module_size(deploy, example),
                      ort_test_metrics(fp32, data.test))]
    files = {"onnx": ONNX_FILE, "structure": "structure.json"}
    if ex.precision != "fp32":
        reduced, precision_metrics = _reduced(cfg, model, data, columns[0], tmp / ONNX_FILE,
                                              {**meta, "compress.precision": ex.precision})
        columns.append(reduced)
        metrics.update(precision_metrics)
        metrics["onnx_fp32_bytes"] = float(fp32.stat().st_size)
        metrics.update({f"onnx_fp32_{k}": v for k, v in columns[0].metrics.items()})
        files["onnx_fp32"] = FP32_FILE
    table = _table(cfg, model, data, columns, shrunk)
    metrics.update(_table_summary(table, ex.precision))
    if data.preprocess and data.preprocess.get("kind") == "table":
        metrics.update(_raw_rows_in(cfg, model, data, [c.path for c in columns]))
    deployed = columns[-1]
    metrics["onnx_bytes"] = float(deployed.path.stat().st_size)
    metrics.update({f"onnx_{k}": v for k, v in deployed.metrics.items()})
    (tmp / "structure.json").write_text(json.dumps(spec, indent=2, default=str))
    (tmp / TABLE_JSON).write_text(json.dumps(table, indent=2))
    (tmp / TABLE_MD).write_text(to_markdown(table))
    files.update(export_table=TABLE_JSON, export_table_md=TABLE_MD)
    return Work(files, metrics, masks.density() if masks is not None else 1.0,
                extra={"structure": spec, "source_metrics": src.record["metrics"],
                       "onnx_metadata": meta, "export_table": table,
                       "deployment": _deployment(ex), **_raw_inputs(data)})


def _raw_rows_in(cfg: Config, model, data, paths: list[Path]) -> dict[str, float]:
    """The table's preprocessing put in front of every deployed ONNX file, checked on raw test
    rows against PyTorch on the same rows encoded (fp32 gated by export.rtol; a reduced copy's
    error is informational)."""
    from compress.export.onnx import check_parity
    from compress.export.preprocess import prepend_table, raw_feed
    ex = cfg.export
    n = min(ex.parity_samples, len(data.test))
    feed = raw_feed(data.preprocess, data.raw_rows("test", slice(0, n)))
    out = {}
    for i, path in enumerate(paths):
        prepend_table(path, data.preprocess)
        key = "parity_raw_rel_error" if i == 0 else "precision_raw_rel_error"
        out[key] = check_parity(path, model, data.test.head(n), rtol=ex.rtol if i == 0 else math.inf,
                                feed=feed)
    return out


def _raw_inputs(data) -> dict:
    """The served model's raw inputs (name, MLflow type, kind), for tables."""
    if not (data.preprocess and data.preprocess.get("kind") == "table"):
        return {}
    from compress.export.preprocess import raw_inputs
    return {"raw_inputs": raw_inputs(data.preprocess)}


def _reduced(cfg: Config, model, data, fp32, dest: Path, meta: dict):
    """The reduced-precision copy of the fp32 column, gated on its accuracy change."""
    from compress.export.bench_table import Column, ort_test_metrics
    from compress.export.onnx import check_parity
    from compress.export.precision import accuracy_gate, calibration_batches, reduce_precision
    ex = cfg.export
    calibration = None
    if ex.precision == "int8-static":
        calibration = calibration_batches(data.train, ex.calibration_batches,
                                          ex.calibration_batch_size, cfg.seed)
    reduce_precision(fp32.path, dest, ex.precision, calibration=calibration,
                     providers=ex.providers, metadata=meta)
    scored = ort_test_metrics(dest, data.test)
    change = accuracy_gate(fp32.metrics["test_accuracy"], scored["test_accuracy"],
                           ex.max_accuracy_drop, ex.precision)
    # Informational: how far the reduced model's outputs are from PyTorch's (no tolerance).
    rel = check_parity(dest, model, data.test.head(ex.parity_samples), rtol=math.inf)
    return (Column(ex.precision, dest, fp32.params, fp32.macs, scored),
            {"precision_accuracy_change": change, "precision_rel_error": rel})


def _table(cfg: Config, model, data, columns: list, shrunk: bool) -> dict:
    """The export table; with export.benchmark, the dense model is exported and timed too."""
    from compress.export.bench_table import Column, build_table, module_size, ort_test_metrics
    from compress.export.onnx import export_onnx
    ex = cfg.export
    if not ex.benchmark:
        return build_table(columns, data.in_shape, rounds=None)
    with tempfile.TemporaryDirectory(prefix="compress-dense-") as scratch:
        if shrunk:  # the same masked model at dense shapes: what the shrink saves
            dense = export_onnx(model, data.test.head(2), Path(scratch) / "dense.onnx",
                                opset=ex.opset, exporter=ex.exporter)
            columns = [Column("dense", dense, *module_size(model, data.test.head(1)),
                              ort_test_metrics(dense, data.test)), *columns]
        return build_table(columns, data.in_shape, rounds=ex.latency_rounds)


def _table_summary(table: dict, precision: str) -> dict[str, float]:
    """Every table cell as a metric, plus the speedups of the shrink and of the precision."""
    from compress.export.bench_table import LATENCY_BATCHES, ratio, table_metrics
    out = table_metrics(table)
    cols = table["columns"]
    fp32 = "shrunk" if "shrunk" in cols else "dense"
    for batch in LATENCY_BATCHES:
        row = f"latency_b{batch}_ms"
        if "shrunk" in cols and "dense" in cols:
            out[f"shrink_speedup_b{batch}"] = ratio(table, row, "dense", "shrunk")
        if precision != "fp32":
            out[f"precision_speedup_b{batch}"] = ratio(table, row, fp32, precision)
    return {k: v for k, v in out.items() if v is not None}


def _deployment(ex) -> dict:
    from compress.export.precision import CHECK_PROVIDER, unavailable_here
    return {"precision": ex.precision, "providers": list(ex.providers),
            "checked_on": CHECK_PROVIDER, "unavailable_here": unavailable_here(ex.providers)}


def _deployable(cfg: Config, model, masks, example: torch.Tensor):
    """The physically smaller module computing the masked model's function, and its spec; or
    the masked model itself when shrinking is off, finds nothing to remove, or (with
    `shrink: auto`) does not support the model (compress.core.shrink decides which shrink)."""
    ex = cfg.export
    if not ex.shrink:
        return model, {"shrunk": False, "reason": "masks only (export.shrink=false)"}
    if ex.round_to == "auto":
        return _fastest_rounding(model, example, masks, ex)
    return _shrink(model, example, masks, ex, ex.round_to)


def _shrink(model, example: torch.Tensor, masks, ex, round_to: int, widths=None):
    from compress.core.shrink import shrink
    if ex.round == "latency":  # times candidates in onnxruntime: an export-side rule
        from compress.export.latency_widths import measured_widths
        widths = measured_widths(model, masks, example, rounds=max(3, ex.latency_rounds // 6),
                                 opset=ex.opset)
    return shrink(model, masks, example, round_to=round_to, rounding=ex.round,
                  budget=ex.round_budget, rtol=ex.rtol, strict=ex.shrink is True, widths=widths)


AUTO_ROUNDINGS = (1, 8, 16)


def _fastest_rounding(model, example: torch.Tensor, masks, ex):
    """The shrink whose rounding of widths (1, 8 or 16) runs fastest at batch 16 in
    onnxruntime on this machine (round-robin medians), with every candidate's latency."""
    from compress.export.bench_table import TIMING_THREADS
    from compress.export.onnx import export_onnx, ort_latencies
    shrunk = [_shrink(model, example, masks, ex, r) for r in AUTO_ROUNDINGS]
    if not any(spec.get("shrunk") for _, spec in shrunk):  # nothing to choose between
        return shrunk[0]
    with tempfile.TemporaryDirectory(prefix="compress-round-") as scratch:
        paths = [export_onnx(net, example, Path(scratch) / f"r{r}.onnx", opset=ex.opset,
                             exporter=ex.exporter)
                 for (net, _), r in zip(shrunk, AUTO_ROUNDINGS)]
        seconds = ort_latencies(paths, 16, tuple(example.shape[1:]), repeats=ex.latency_rounds,
                                threads=TIMING_THREADS)
    best = min(range(len(seconds)), key=lambda i: (seconds[i], AUTO_ROUNDINGS[i]))
    net, spec = shrunk[best]
    spec["round_to_auto"] = {str(r): s * 1e3 for r, s in zip(AUTO_ROUNDINGS, seconds)}
    return net, spec


def _metadata(src: StageInfo, spec: dict, data, providers: list[str]) -> dict[str, str]:
    rec = src.record
    return {
        "compress.source_run": str(rec.get("run_id")), "compress.source_stage": rec["stage"],
        "compress.method": str(rec.get("method")), "compress.density": f"{rec.get('density', 1.0):.6g}",
        "compress.layer_density": json.dumps(rec.get("layer_density", {})),
        "compress.kept_features": json.dumps(spec.get("input_kept", "all")),
        "compress.dataset": data.name, "compress.input_width": str(math.prod(data.in_shape)),
        "compress.providers": json.dumps(list(providers)),
        # What a deployment does to raw inputs first (image decoding; tables: inside the graph)
        **({"compress.preprocess": json.dumps(data.preprocess)} if data.preprocess else {}),
        **{f"compress.{k}": json.dumps(v) for k, v in _raw_inputs(data).items()},
    }


def _register(cfg: Config, env: StageEnv, src: StageInfo, record: dict, data) -> dict:
    m = record["source_metrics"]
    tags = {"method": str(record.get("method")), "density": f"{record['density']:.6g}",
            **_model_lineage(src.record.get("model_ref") or {}),
            "dataset": data.name, "source_run": str(src.record.get("run_id")),
            "export_run": str(record["run_id"]), "data_fingerprint": data.fingerprint()[:16],
            "precision": cfg.export.precision, "providers": ",".join(cfg.export.providers),
            **{f"metric.{k}": f"{v:.6g}" for k, v in m.items() if k.startswith("test_")}}
    name, alias = cfg.export.registry_name, cfg.export.alias
    # All or nothing: SIGINT/SIGTERM wait for the registration; one that came during it undoes
    # it (exit 130, nothing registered), one after it waits for the next stage or the end
    # of the command (the registration stands and the command succeeds).
    try:
        with interrupts.deferred() as guard:
            with env.tracker.run("register", tags={"compress.stage": "register"},
                                 run_id=record["run_id"]):
                out = env.tracker.register_onnx(Path(record["out_dir"]) / ONNX_FILE, name,
                                                tags=tags, alias=alias,
                                                input_example=_input_example(data),
                                                providers=list(cfg.export.providers))
                guard.commit()
    except KeyboardInterrupt:
        raise Interrupted(f"interrupted during the registration of {name!r}: nothing was "
                          "registered, the export's folder was discarded; finished stages "
                          "are kept") from None
    env.log(f"registered {name} version {out.get('version')} (@{alias})")
    return out


def _model_lineage(ref: dict) -> dict[str, str]:
    """Registry tags naming the model that was compressed: its reference (a registered model's
    pinned URI and version), and where its trained weights came from (file sha256 or URI)."""
    source = ref.get("pinned_uri") or ref.get("name", "")
    tags = {"source_model": str(source)}
    registry = next((u for u in (ref.get("pinned_uri"), ref.get("weights"))
                     if isinstance(u, str) and u.startswith("models:/")), None)
    if registry:
        tags["source_model_uri"], tags["source_model_version"] = registry, registry.rsplit("/", 1)[1]
    if ref.get("weights"):
        tags["weights"] = str(ref["weights"])
    if ref.get("weights_sha256"):
        tags["weights_sha256"] = ref["weights_sha256"]
    if ref.get("file_sha256"):
        tags["model_code_sha256"] = ref["file_sha256"]
    return tags


def _input_example(data):
    """Two test inputs as the deployed model takes them (a table's: raw columns by name)."""
    if data.preprocess and data.preprocess.get("kind") == "table":
        from compress.export.preprocess import raw_feed
        return raw_feed(data.preprocess, data.raw_rows("test", slice(0, 2)))
    return data.test.head(2).numpy()
