"""Export: the masked model, structurally shrunk, to ONNX; parity-gated; optionally registered."""

from __future__ import annotations

import json
from pathlib import Path

import torch

from compress.config import Config
from compress.core.masking import apply_masks
from compress.core.metrics import classification_metrics
from compress.errors import UserError
from compress.stages.artifacts import StageInfo
from compress.stages.runner import StageEnv, Work, build, load_data, run_stage

ONNX_FILE = "model.onnx"


def export(cfg: Config, src: StageInfo, env: StageEnv, out: Path | None = None) -> dict:
    if not src.has("weights"):
        raise UserError(f"{src.dir} ({src.stage}) has no weights to export")
    if cfg.export.registry_name:  # a registration that must fail does so before any work
        env.tracker.check_register(cfg.export.registry_name, cfg.export.alias)
    data = load_data(cfg)
    model = build(cfg, data)
    model.load_state_dict(src.state("weights"))
    masks = src.masks()
    if masks is not None:
        apply_masks(model, masks)
    model.eval()
    seeds = src.record.get("method_info", {}).get("seeds")
    if seeds is not None:  # a random network: its weights must rebuild from its seeds
        _verify_seeds(model, seeds, src, masks)
    method = src.record.get("method")
    record_holder: dict = {}

    def body(tmp: Path) -> Work:
        from compress.export.onnx import check_parity, export_onnx

        deploy, spec = _deployable(cfg, model, masks)
        meta = _metadata(src, spec, data)
        export_onnx(deploy, data.test.x[:2], tmp / ONNX_FILE, metadata=meta, opset=cfg.export.opset)
        err = check_parity(tmp / ONNX_FILE, model, data.test.x[:cfg.export.parity_samples],
                           rtol=cfg.export.rtol)
        (tmp / "structure.json").write_text(json.dumps(spec, indent=2, default=str))
        metrics = {"parity_rel_error": err, "onnx_bytes": float((tmp / ONNX_FILE).stat().st_size),
                   **{f"onnx_test_{k}": v for k, v in _onnx_metrics(tmp / ONNX_FILE, data).items()}}
        record_holder["spec"] = spec
        return Work({"onnx": ONNX_FILE, "structure": "structure.json"}, metrics,
                    masks.density() if masks is not None else 1.0,
                    extra={"structure": spec, "source_metrics": src.record["metrics"],
                           "onnx_metadata": meta})

    record = run_stage("export", cfg, env, body, src=src, out=out, method=method)
    if cfg.export.registry_name:
        record["registered"] = _register(cfg, env, src, record, data)
    return record


def _verify_seeds(model, seeds: dict, src: StageInfo, masks) -> None:
    from compress.export.onnx import ExportError
    from compress.methods.edgepopup import rebuild
    redrawn = src.state("redrawn") if src.has("redrawn") else {}
    params = dict(model.named_parameters())
    for name, w in rebuild(model, seeds, redrawn, masks).items():
        if not torch.equal(w, params[name].detach()):
            raise ExportError(f"{name} in {src.dir} does not match the weights rebuilt from its "
                              "seeds; the stage folder was altered, re-run the prune stage")


def _deployable(cfg: Config, model, masks):
    """The shrunk module and its spec, or the masked model itself when shrinking is off."""
    from compress.models.mlp import MLP
    if cfg.export.shrink and isinstance(model, MLP):
        from compress.core.structure import shrink_mlp
        return shrink_mlp(model, masks)
    if cfg.export.shrink is True:
        raise UserError(f"structural shrink supports MLP models, not {type(model).__name__}; "
                        "export with masks only: --set export.shrink=false")
    return model, {"shrunk": False, "reason": "masks only" if cfg.export.shrink is False else
                   f"no structural shrink for {type(model).__name__} yet; exported with masks"}


def _metadata(src: StageInfo, spec: dict, data) -> dict[str, str]:
    rec = src.record
    return {
        "compress.source_run": str(rec.get("run_id")), "compress.source_stage": rec["stage"],
        "compress.method": str(rec.get("method")), "compress.density": f"{rec.get('density', 1.0):.6g}",
        "compress.layer_density": json.dumps(rec.get("layer_density", {})),
        "compress.kept_features": json.dumps(spec.get("input_kept", "all")),
        "compress.dataset": data.name, "compress.input_width": str(int(data.test.x[0].numel())),
    }


def _onnx_metrics(path: Path, data) -> dict[str, float]:
    """Test metrics computed by onnxruntime itself: what a deployment would score."""
    from compress.export.onnx import ort_session
    sess = ort_session(path)
    name = sess.get_inputs()[0].name
    logits = torch.from_numpy(sess.run(None, {name: data.test.x.numpy()})[0])
    return {k: v for k, v in classification_metrics(logits, data.test.y).items() if k != "loss"}


def _register(cfg: Config, env: StageEnv, src: StageInfo, record: dict, data) -> dict:
    m = record["source_metrics"]
    tags = {"method": str(record.get("method")), "density": f"{record['density']:.6g}",
            "dataset": data.name, "source_run": str(src.record.get("run_id")),
            "export_run": str(record["run_id"]), "data_fingerprint": data.fingerprint()[:16],
            **{f"metric.{k}": f"{v:.6g}" for k, v in m.items() if k.startswith("test_")}}
    with env.tracker.run("register", tags={"compress.stage": "register"}, run_id=record["run_id"]):
        return env.tracker.register_onnx(Path(record["out_dir"]) / ONNX_FILE, cfg.export.registry_name,
                                         tags=tags, alias=cfg.export.alias,
                                         input_example=data.test.x[:2].numpy())
