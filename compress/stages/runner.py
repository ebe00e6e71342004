"""What every stage shares: building data and model, identity, the tracked atomic write."""

from __future__ import annotations

import contextlib
import functools
import json
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import torch
from torch import nn

from compress import interrupts, status
from compress.config import Config
from compress.core import dist
from compress.core.loop import evaluate
from compress.errors import Diverged
from compress.stages.artifacts import HISTORY, StageInfo, staging, write_record
from compress.tracking.base import NullTracker, Tracker

DEFAULT_ROOT = Path("runs")


@dataclass
class StageEnv:
    """How stages run: where outputs go, which tracker, whether to draw progress bars."""

    tracker: Tracker = field(default_factory=NullTracker)
    root: Path = DEFAULT_ROOT
    progress: bool = True

    def __post_init__(self):
        self.progress = self.progress and dist.is_main()  # under torchrun: rank 0 reports

    def log(self, message: str) -> None:
        """A status line on stderr (stdout belongs to --json): what a CI log shows."""
        if self.progress:
            status.say(message)


@dataclass
class Work:
    """What a stage's body produced, to be recorded in stage.json and tracked."""

    files: dict[str, str]
    metrics: dict[str, float]
    density: float = 1.0
    history: list[dict] = field(default_factory=list)
    extra: dict = field(default_factory=dict)


@functools.lru_cache(maxsize=4)
def _cached_data(name: str, opts_json: str, files: str | None):
    from compress.data import load_dataset
    return load_dataset(name, json.loads(opts_json))


def load_data(cfg: Config):
    """The configured data; loaded once per process for the same options and, for files,
    the same fingerprint (an edited file is read again)."""
    from compress.data.filebacked import files_fingerprint
    name, opts = cfg.section("data")
    return _cached_data(name, json.dumps(opts, sort_keys=True), files_fingerprint(cfg.data))


def data_record(data) -> dict:
    """What every stage records about its data: the fingerprint and the loader's facts
    (e.g. computed mean/std, class names, dropped rows)."""
    return {"data_fingerprint": data.fingerprint(), "data_facts": data.facts,
            **({"data_preprocess": data.preprocess} if data.preprocess else {})}


def build(cfg: Config, data, seed_offset: int = 0, architecture: dict | None = None,
          dense_state: dict | None = None) -> nn.Module:
    """The configured model with a seeded initialisation; with `architecture` (the spec a
    physically pruning stage recorded) cut to that smaller shape, after loading `dense_state`
    (weights of the configured model, e.g. its initialisation) if given."""
    from compress.models import build_model
    name, opts = cfg.section("model")
    torch.manual_seed(cfg.seed + seed_offset)
    model = build_model(name, opts, data.in_shape, data.num_classes)
    if dense_state is not None:
        model.load_state_dict(dense_state)
    if architecture:
        from compress.core.surgery import apply
        apply(model, architecture, torch.zeros(1, *data.in_shape))
    return model


def architecture(src: StageInfo | None) -> dict | None:
    """The architecture spec of a physically pruned source stage (None: the configured model)."""
    return src.record.get("architecture") if src is not None else None


def model_reference(section: dict) -> dict:
    """How every later command rebuilds this model (reference, options, sha256 of weights and
    code)."""
    from compress.models.base import reference
    return reference(section)


def load_trained(model: nn.Module, cfg: Config, data) -> dict | None:
    """Load the configured trained weights (model.weights, or a registered model's) into a
    freshly built `model`; returns what was loaded (for the record), None if there are none."""
    from compress.models.base import initial_weights
    return initial_weights(model, cfg.model, data.test.head(1))


def split_metrics(model: nn.Module, data) -> dict[str, float]:
    out = {}
    for split in ("val", "test"):
        out.update({f"{split}_{k}": v for k, v in evaluate(model, getattr(data, split)).items()})
    return out


# The config sections each stage reads: its identity hashes only these (plus its source's
# identity), so changing a prune option does not invalidate a finished pretrain.
STAGE_INPUTS = {
    "import": ("seed", "data", "model"),
    "pretrain": ("seed", "data", "model", "train"),
    "prune": ("seed", "data", "model", "train", "method"),
    "retrain": ("seed", "data", "model", "train", "retrain"),
    "export": ("seed", "data", "model", "export"),
}


DISTILLING_STAGES = ("prune", "retrain")


def identity(stage: str, cfg: Config, source_id: str = "") -> str:
    """Hash of the config sections the stage reads and its source's identity; model files and
    weights by their sha256, file-backed data by the files' fingerprint (edited files are never
    reused), and without the options that only change loading speed."""
    from compress.data.filebacked import files_fingerprint, identity_view
    from compress.models.base import identity as model_identity
    sections = STAGE_INPUTS[stage]
    if cfg.distill is not None and stage in DISTILLING_STAGES:
        sections += ("distill",)
    if cfg.plugins:  # the code that ran is part of what a stage is
        sections += ("plugins",)
    files = files_fingerprint(cfg.data)
    return cfg.digest(stage, source_id, *((files,) if files else ()), sections=sections,
                      replace={"model": model_identity(cfg.model), "data": identity_view(cfg.data)})


def stage_id(stage: str, cfg: Config, src: StageInfo | None) -> str:
    return identity(stage, cfg, src.id if src else "")


def run_stage(stage: str, cfg: Config, env: StageEnv, body: Callable[[Path], Work], *,
              src: StageInfo | None = None, out: Path | None = None,
              method: str | None = None) -> dict:
    """Run `body` in a staging folder under a tracked run; record and log what it made.

    Under torchrun every rank runs `body` (it trains, and DDP needs every rank at every step);
    rank 0 writes the stage folder and tracks the run, and every rank returns rank 0's record.
    """
    sid = stage_id(stage, cfg, src)
    out_dir = Path(out) if out else env.root / f"{stage}-{(method + '-') if method else ''}{sid[:10]}"
    tags = {"compress.stage": stage, "compress.id": sid, **({"compress.method": method} if method else {}),
            **({"compress.source_run": src.record.get("run_id", "")} if src else {})}
    label = _label(stage, method)
    interrupts.release()  # a signal held since an earlier stage's registration stops us here
    with env.tracker.run(label, tags=tags) as run_id:
        env.log(f"{label} started -> {out_dir}")  # the run exists from this line on
        with _stage_folder(out_dir) as tmp:
            started = time.perf_counter()
            work = _diverging(label, env, body, tmp)
            record = {
                "stage": stage, "id": sid, "run_id": run_id, "method": method,
                "config": cfg.dump(), "model_ref": model_reference(cfg.model),
                "metrics": work.metrics, "density": work.density,
                "files": work.files, "source": _source(src), "out_dir": str(out_dir),
                "tracking": env.tracker.describe(), **work.extra,
                "seconds": round(time.perf_counter() - started, 3),
            }
            dist.on_main(lambda: _write(tmp, work, record))
        _track(env.tracker, cfg.dump(), work, out_dir)
    record = dist.from_main(record)
    env.log(f"{label} done in {record['seconds']:.1f} s  "
            f"{_headline(work.metrics)}density {work.density:.4g}  -> {out_dir}")
    return record


def _diverging(label: str, env: StageEnv, body: Callable[[Path], Work], tmp: Path) -> Work:
    """The body; a diverged loss names the stage, and its run says why it failed."""
    try:
        return body(tmp)
    except Diverged as exc:
        message = f"{label} diverged: {exc}"
        with contextlib.suppress(Exception):  # the reason, on the run that ends FAILED
            env.tracker.set_tags({"compress.error": message})
        raise Diverged(message) from None


def _write(tmp: Path, work: Work, record: dict) -> None:
    if work.history:
        (tmp / HISTORY).write_text(json.dumps(work.history))
        record["files"] = {**record["files"], "history": HISTORY}
    write_record(tmp, record)


@contextlib.contextmanager
def _stage_folder(out_dir: Path):
    """Rank 0 (or the only process): the staging folder renamed to out_dir at the end. Other
    ranks run the body in a private scratch folder; what it writes there is deleted after."""
    with dist.main_context(lambda: staging(out_dir), share=False) as tmp:
        if tmp is not None:
            yield tmp
            return
        with tempfile.TemporaryDirectory(prefix=f"compress-rank{dist.rank()}-") as scratch:
            yield Path(scratch)


def _headline(metrics: dict) -> str:
    return "".join(f"{k} {metrics[k]:.4f}  " for k in ("test_auc", "test_accuracy") if k in metrics)


def _source(src: StageInfo | None) -> dict | None:
    if src is None:
        return None
    return {"dir": str(src.dir), "id": src.id, "run_id": src.record.get("run_id"),
            "stage": src.stage, "method": src.record.get("method")}


def _track(tracker: Tracker, config: dict, work: Work, out_dir: Path) -> None:
    tracker.log_params(config)
    if work.history:
        tracker.log_history(work.history, step_key="epoch")
    # Final metrics follow the per-epoch history (steps 0..n-1) at step n.
    tracker.log_metrics({**work.metrics, "density": work.density}, step=len(work.history))
    tracker.set_tags({"compress.out_dir": str(out_dir.resolve())})
    tracker.log_artifacts(out_dir, "stage")


def _label(stage: str, method: str | None) -> str:
    """The run's name and the status lines' label: `prune:magnitude`, `pretrain`."""
    return f"{stage}:{method}" if method else stage


def complete_run(env: StageEnv, info: StageInfo) -> bool:
    """A reused stage whose MLflow run did not finish (the process or the tracking server died
    after its folder was written) gets that same run logged again from the folder: params,
    history, metrics, tags and artifacts, then FINISHED. Same run id, so stage.json, later
    stages' `compress.source_run` and registry tags stay right. True if it was re-logged."""
    run_id = info.record.get("run_id")
    status_now = env.tracker.run_status(run_id) if run_id else None
    if status_now in (None, "FINISHED"):  # complete, or not in this store (e.g. --no-track)
        return False
    label = _label(info.stage, info.record.get("method"))
    env.log(f"{label}: MLflow run {run_id} is {status_now}; logging it again from {info.dir}")
    history_file = Path(info.dir) / HISTORY
    history = json.loads(history_file.read_text()) if history_file.is_file() else []
    work = Work(info.record.get("files", {}), info.record.get("metrics", {}),
                info.record.get("density", 1.0), history)
    with env.tracker.run(label, run_id=run_id):
        _track(env.tracker, info.record["config"], work, Path(info.dir))
    return True
