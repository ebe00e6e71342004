"""The stages that make models: import (a trained model, evaluated), pretrain (dense
training), prune (a method), retrain (a control or fine-tune)."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import torch

from compress.config import Config
from compress.core import dist
from compress.core.loop import fit
from compress.core.masking import MaskEnforcer, apply_masks, prunable_parameters
from compress.core.masks import MASK_FILE, MASK_META, MaskSet
from compress.core.shrink import structure
from compress.errors import UserError
from compress.stages.artifacts import INIT, WEIGHTS, StageInfo, plot_curve, plot_density, save_state
from compress.stages.runner import (StageEnv, Work, architecture, build, data_record, load_data,
                                    load_trained, run_stage, split_metrics)


def import_model(cfg: Config, env: StageEnv, out: Path | None = None) -> dict:
    """A model that arrives trained (model.weights, or a registered model): evaluated on the
    data, not trained. Its metrics are the dense baseline; its weights are also the rewind point
    (`init`), since the model's own initialisation is unknown."""
    data = load_data(cfg)
    model = build(cfg, data)
    imported = load_trained(model, cfg, data)  # bad weights are refused before a run exists
    if imported is None:
        raise UserError("the import stage needs trained weights: set model.weights=PATH, or "
                        "--from models:/NAME@ALIAS; to train from scratch use pretrain")

    def body(tmp: Path) -> Work:
        save_state(model, tmp / WEIGHTS)
        os.link(tmp / WEIGHTS, tmp / INIT)  # the same bytes: no second copy on disk
        return Work({"weights": WEIGHTS, "init": INIT}, split_metrics(model, data), 1.0, [],
                    {"structure": structure(model, None), **data_record(data),
                     "dense_train": None, "dense_seed": cfg.seed, "imported": imported})

    return run_stage("import", cfg, env, body, out=out)


def pretrain(cfg: Config, env: StageEnv, out: Path | None = None) -> dict:
    """Dense training from a seeded init, or fine-tuning of model.weights when they are set."""
    data = load_data(cfg)

    def body(tmp: Path) -> Work:
        model = build(cfg, data)
        imported = load_trained(model, cfg, data)
        save_state(model, tmp / INIT)
        history = fit(model, data, cfg.train, seed=cfg.seed, progress="pretrain" if env.progress else None)
        save_state(model, tmp / WEIGHTS)
        return Work({"weights": WEIGHTS, "init": INIT}, split_metrics(model, data), 1.0, history,
                    {"structure": structure(model, None), **data_record(data),
                     "dense_train": cfg.train.model_dump(), "dense_seed": cfg.seed,
                     **({"imported": imported} if imported else {})})

    return run_stage("pretrain", cfg, env, body, out=out)


def _dense_train(cfg: Config, src: StageInfo):
    """The TrainConfig of the source's dense training (replayed to reach a rewind point), or
    None for an imported model, whose training compress never saw."""
    from compress.config import TrainConfig
    recorded = src.record.get("dense_train", cfg.train.model_dump())
    return TrainConfig(**recorded) if recorded is not None else None


def _with_teacher(cfg: Config, train, src: StageInfo, data):
    """`train` distilling from the dense model of `src`'s lineage when `distill` is set."""
    if cfg.distill is None:
        return train
    from compress.stages.lineage import dense_teacher
    return train.with_teacher(dense_teacher(cfg, src, data), cfg.distill)


def prune(cfg: Config, src: StageInfo, env: StageEnv, out: Path | None = None) -> dict:
    from compress.methods.base import PruneContext
    from compress.registry import METHODS

    name, _ = cfg.section("method")
    entry, params = METHODS.get(name), cfg.method_params()
    data = load_data(cfg)
    model, start = _load(cfg, data, src)
    arch = architecture(src)
    ctx = PruneContext(model, data, _with_teacher(cfg, cfg.train, src, data), start, cfg.seed,
                       env.progress, init=_init(cfg, data, src), dense_train=_dense_train(cfg, src),
                       dense_seed=src.record.get("dense_seed", cfg.seed),
                       build=lambda offset: build(cfg, data, seed_offset=offset, architecture=arch))
    entry.obj.check(params, ctx)  # refuse bad options before a run or folder exists

    def body(tmp: Path) -> Work:
        ctx.on_round = _round_logger(env, tmp)
        result = entry.obj.run(params, ctx)
        dist.check_same(result.masks.values(), f"{name} masks")  # torchrun: same on all ranks
        apply_masks(model, result.masks)
        extra = {"method_info": result.info, "dense_metrics": src.record["metrics"]}
        if "pruning" in result.info:  # requested vs achieved, for the summary and --json
            extra["pruning"] = result.info["pruning"]
        if result.architecture is not None:  # the method cut the model: how to rebuild it
            from compress.core.surgery import compose
            extra["architecture"] = compose(arch, result.architecture)
        elif arch is not None:
            extra["architecture"] = arch
        work = _finish(tmp, model, result.masks, src, data, result.history, extra)
        for key, tensors in result.tensors.items():  # e.g. IteRand's redrawn positions
            from safetensors.torch import save_file
            save_file({k: v.contiguous() for k, v in tensors.items()}, str(tmp / f"{key}.safetensors"))
            work.files[key] = f"{key}.safetensors"
        if "curve" in result.info:
            plot_curve(result.info["curve"], tmp / "curve.png", name)
            work.files["curve_plot"] = "curve.png"
            work.extra["curve"] = result.info["curve"]
        return work

    return run_stage("prune", cfg, env, body, src=src, out=out, method=name)


def check_device(stage: str, cfg: Config) -> None:
    """A training stage's train.device exists on this machine (UserError before anything runs)."""
    from compress.core.loop import training_device
    if stage == "retrain":
        training_device((cfg.retrain.train or cfg.train).device)
    elif stage in ("pretrain", "prune"):
        training_device(cfg.train.device)


def check_prune(cfg: Config, dense_train: dict | None = None, imported: bool = False) -> None:
    """The method's own checks (layer names, channel groups, schedule lengths) on a freshly
    built model of the configured architecture. Pipelines run this for every prune stage before
    the first stage starts, so a bad option is refused before anything is trained or written."""
    from compress.config import TrainConfig
    from compress.methods.base import PruneContext
    from compress.registry import METHODS

    entry = METHODS.get(cfg.section("method")[0])
    data = load_data(cfg)
    model = build(cfg, data)
    dense = None if imported else (TrainConfig(**dense_train) if dense_train else cfg.train)
    ctx = PruneContext(model, data, cfg.train, MaskSet.ones_like(prunable_parameters(model)),
                       cfg.seed, progress=False, init=model.state_dict(), dense_train=dense,
                       dense_seed=cfg.seed, build=lambda offset: build(cfg, data, seed_offset=offset))
    entry.obj.check(cfg.method_params(), ctx)


def _round_logger(env: StageEnv, tmp: Path):
    """Each round of a multi-round method: its masks on disk and a nested tracked run."""
    def log(index: int, masks: MaskSet, metrics: dict, history: list[dict]) -> None:
        folder = tmp / "rounds" / f"round-{index:02d}"
        masks.save(folder, round=index)
        with env.tracker.run(f"round-{index}", tags={"compress.stage": "round",
                                                     "compress.round": str(index)}):
            env.tracker.log_history(history)
            env.tracker.log_metrics({k: v for k, v in metrics.items() if isinstance(v, (int, float))},
                                    step=len(history))
            env.tracker.log_artifacts(folder, "round")
        shown = [k for k in metrics if k.endswith(("accuracy", "fitness"))][:4]
        env.log(f"  round {index}: density {masks.density():.4f}  " + "  ".join(
            f"{k} {metrics[k]:.4f}" for k in shown))
    return log


def retrain(cfg: Config, src: StageInfo, env: StageEnv, out: Path | None = None) -> dict:
    from compress.methods import controls
    if not src.has("masks"):
        raise UserError(f"{src.dir} holds no masks (a {src.stage} stage); retrain needs the "
                        "output of prune or retrain")
    mode, data = cfg.retrain.mode, load_data(cfg)
    arch = architecture(src)
    shaped = build(cfg, data, architecture=arch)  # the model the source's weights fit
    dense = shaped if arch is None else build(cfg, data)  # ... and its init
    masks = src.masks(like=shaped)
    train_cfg = _with_teacher(cfg, cfg.retrain.train or cfg.train, src, data)
    rewound = None
    if mode in ("rewind", "random_prune"):
        rewound = controls.rewind_state(
            lambda o: build(cfg, data, seed_offset=o), src.state("init", like=dense),
            cfg.retrain.rewind, data, _dense_train(cfg, src),
            src.record.get("dense_seed", cfg.seed))
        if arch is not None:  # the rewound dense weights of the kept channels
            rewound = build(cfg, data, architecture=arch, dense_state=rewound).state_dict()
    example = data.test.head(1)
    dense_macs = None
    if arch is not None:  # Scratch-B's budget scales with the configured (dense) model's MACs
        from compress.core.flops import layer_macs
        dense_macs = float(sum(layer_macs(dense, example).values()))
    trained = src.state("weights", like=shaped) if mode == "finetune" else None
    start = controls.prepare(mode, build=lambda o: build(cfg, data, seed_offset=o,
                                                         architecture=arch),
                             masks=masks, trained=trained,
                             rewound=rewound, duration=train_cfg.duration, example=example,
                             seed=cfg.seed, scope=cfg.retrain.scope, dense_macs=dense_macs)

    def body(tmp: Path) -> Work:
        history = fit(start.model, data, train_cfg, seed=cfg.seed, masks=MaskEnforcer(start.masks),
                      duration=start.duration, progress=f"retrain:{mode}" if env.progress else None)
        extra = {"mode": mode, **start.info, **({"architecture": arch} if arch else {})}
        return _finish(tmp, start.model, start.masks, src, data, history, extra)

    return run_stage("retrain", cfg, env, body, src=src, out=out, method=src.record.get("method"))


def _init(cfg: Config, data, src: StageInfo) -> dict[str, torch.Tensor]:
    """The source's initialisation, cut like the source's model when it was cut."""
    arch = architecture(src)
    init = src.state("init", like=build(cfg, data))
    return init if arch is None else build(cfg, data, architecture=arch,
                                           dense_state=init).state_dict()


def _load(cfg: Config, data, src: StageInfo) -> tuple[torch.nn.Module, MaskSet]:
    model = build(cfg, data, architecture=architecture(src))
    model.load_state_dict(src.state("weights", like=model))
    masks = src.masks(like=model) or MaskSet.ones_like(prunable_parameters(model))
    apply_masks(model, masks)
    return model, masks


def _finish(tmp: Path, model, masks: MaskSet, src: StageInfo, data, history, extra) -> Work:
    save_state(model, tmp / WEIGHTS)
    shutil.copyfile(src.path("init"), tmp / INIT)
    masks.save(tmp, source_run=src.record.get("run_id"))
    plot_density(masks, tmp / "density.png", extra.get("mode") or "pruned")
    files = {"weights": WEIGHTS, "init": INIT, "masks": MASK_FILE, "masks_meta": MASK_META,
             "density_plot": "density.png"}
    from compress.stages.lineage import dense_source
    extra = {**extra, **data_record(data), "layer_density": masks.layer_density(),
             "structure": structure(model, masks),
             "dense_train": src.record.get("dense_train"), "dense_seed": src.record.get("dense_seed"),
             "dense_source": dense_source(src)}
    return Work(files, split_metrics(model, data), masks.density(), history, extra)
