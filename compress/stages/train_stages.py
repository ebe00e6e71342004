"""The stages that train: pretrain (dense), prune (a method), retrain (a control or fine-tune)."""

from __future__ import annotations

import shutil
from pathlib import Path

import torch

from compress.config import Config
from compress.core.loop import fit
from compress.core.masking import MaskEnforcer, apply_masks, prunable_parameters
from compress.core.masks import MaskSet
from compress.errors import UserError
from compress.stages.artifacts import INIT, WEIGHTS, StageInfo, plot_density, save_state
from compress.stages.runner import StageEnv, Work, build, load_data, run_stage, split_metrics

REINIT_OFFSET = 7919  # seed offset for a fresh random init, distinct from the original init


def pretrain(cfg: Config, env: StageEnv, out: Path | None = None) -> dict:
    data = load_data(cfg)

    def body(tmp: Path) -> Work:
        model = build(cfg, data)
        save_state(model, tmp / INIT)
        history = fit(model, data, cfg.train, seed=cfg.seed, progress="pretrain" if env.progress else None)
        save_state(model, tmp / WEIGHTS)
        return Work({"weights": WEIGHTS, "init": INIT}, split_metrics(model, data), 1.0, history,
                    {"structure": structure(model, None), "data_fingerprint": data.fingerprint()})

    return run_stage("pretrain", cfg, env, body, out=out)


def prune(cfg: Config, src: StageInfo, env: StageEnv, out: Path | None = None) -> dict:
    from compress.methods.base import PruneContext
    from compress.registry import METHODS

    name, _ = cfg.section("method")
    entry, params = METHODS.get(name), cfg.method_params()
    data = load_data(cfg)
    model, start = _load(cfg, data, src)

    def body(tmp: Path) -> Work:
        ctx = PruneContext(model, data, cfg.train, start, cfg.seed, env.progress)
        result = entry.obj(params, ctx)
        apply_masks(model, result.masks)
        return _finish(tmp, model, result.masks, src, data, result.history,
                       {"method_info": result.info, "dense_metrics": src.record["metrics"]})

    return run_stage("prune", cfg, env, body, src=src, out=out, method=name)


def retrain(cfg: Config, src: StageInfo, env: StageEnv, out: Path | None = None) -> dict:
    masks = src.masks()
    if masks is None:
        raise UserError(f"{src.dir} holds no masks (a {src.stage} stage); retrain needs the "
                        "output of prune or retrain")
    mode, data = cfg.retrain.mode, load_data(cfg)
    model = build(cfg, data, seed_offset=REINIT_OFFSET if mode == "reinit" else 0)
    if mode != "reinit":
        model.load_state_dict(src.state("weights" if mode == "finetune" else "init"))

    def body(tmp: Path) -> Work:
        history = fit(model, data, cfg.retrain.train or cfg.train, seed=cfg.seed,
                      masks=MaskEnforcer(masks), progress=f"retrain:{mode}" if env.progress else None)
        return _finish(tmp, model, masks, src, data, history, {"mode": mode})

    return run_stage("retrain", cfg, env, body, src=src, out=out, method=src.record.get("method"))


def _load(cfg: Config, data, src: StageInfo) -> tuple[torch.nn.Module, MaskSet]:
    model = build(cfg, data)
    try:
        model.load_state_dict(src.state("weights"))
    except RuntimeError as e:
        raise UserError(f"the weights in {src.dir} do not fit the configured model "
                        f"({str(e).splitlines()[0]}); keep model.* as in that run") from None
    masks = src.masks() or MaskSet.ones_like(prunable_parameters(model))
    apply_masks(model, masks)
    return model, masks


def _finish(tmp: Path, model, masks: MaskSet, src: StageInfo, data, history, extra) -> Work:
    save_state(model, tmp / WEIGHTS)
    shutil.copyfile(src.path("init"), tmp / INIT)
    masks.save(tmp, source_run=src.record.get("run_id"))
    plot_density(masks, tmp / "density.png", extra.get("mode") or "pruned")
    files = {"weights": WEIGHTS, "init": INIT, "masks": "masks.safetensors",
             "density_plot": "density.png"}
    extra = {**extra, "layer_density": masks.layer_density(), "structure": structure(model, masks)}
    return Work(files, split_metrics(model, data), masks.density(), history, extra)


def structure(model, masks: MaskSet | None) -> dict:
    """Connections / units / features kept, for MLPs; connection counts for other models."""
    from compress.models.mlp import MLP
    if isinstance(model, MLP):
        from compress.core.structure import structure_report
        return structure_report(model, masks)
    kept = masks.kept() if masks else {n: p.numel() for n, p in prunable_parameters(model).items()}
    return {"connections": {"kept": sum(kept.values()),
                            "total": sum(p.numel() for p in prunable_parameters(model).values())}}
