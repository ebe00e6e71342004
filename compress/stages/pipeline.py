"""Pipelines: stages wired by `from`, run under one parent MLflow run.

A pipeline file:
    name: cpna-xor
    config: {data: {name: xor, k: 3}}        # base config of every stage
    stages:
      - {id: dense, stage: pretrain}
      - {id: cpna, stage: prune, from: dense, set: {method: {name: cpna}}}
      - {id: export, stage: export, from: cpna}
A pipeline may also start from finished stages: `sources: {dense: runs/pretrain-ab12}` (a stage
folder or an MLflow run id) lets stages say `from: dense` without running it again.
A stage's config is its source's resolved config, then the pipeline's `config`, its own `set`,
and the command line's --config/--set/--seed, so data and model follow the source.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from compress.vocab import OPTIONS

from compress.config import load_spec, resolve
from compress.core import dist
from compress.errors import UserError
from compress.stages.artifacts import STAGE_FILE, StageInfo, read_stage
from compress.stages.runner import StageEnv, complete_run, identity

StageName = Literal["import", "pretrain", "prune", "retrain", "export"]
FIRST_STAGES = ("import", "pretrain")  # stages that start a lineage (no `from`)


class StageSpec(BaseModel):
    model_config = ConfigDict(**OPTIONS, populate_by_name=True)
    id: str = Field(pattern=r"^[A-Za-z0-9_.-]+$")
    stage: StageName
    from_: str | None = Field(None, alias="from")
    set: dict[str, Any] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _needs_source(self):
        if self.stage not in FIRST_STAGES and not self.from_:
            raise ValueError(f"stage {self.id!r} ({self.stage}) needs `from: <earlier stage id>`")
        if self.stage in FIRST_STAGES and self.from_:
            raise ValueError(f"stage {self.id!r} ({self.stage}) starts a lineage and takes no "
                             "`from`")
        return self


class PipelineSpec(BaseModel):
    model_config = OPTIONS
    name: str = Field(pattern=r"^[A-Za-z0-9_.-]+$")
    config: dict[str, Any] = Field(default_factory=dict)
    sources: dict[str, str] = Field(default_factory=dict, description="id -> folder or run id")
    stages: list[StageSpec] = Field(min_length=1)

    @model_validator(mode="after")
    def _wiring(self):
        seen: set[str] = set(self.sources)
        for s in self.stages:
            if s.id in seen:
                raise ValueError(f"stage id {s.id!r} is used twice")
            if s.from_ and s.from_ not in seen:
                raise ValueError(f"stage {s.id!r} reads from {s.from_!r}, which is not an "
                                 "earlier stage")
            seen.add(s.id)
        return self


def load_pipeline(path: Path) -> PipelineSpec:
    return load_spec(path, PipelineSpec, "pipeline file")


@dataclass
class Planned:
    """A stage as the pipeline will run it: its resolved config, identity and folder."""

    spec: StageSpec
    cfg: Any
    id: str
    out: Path


def plan(spec: PipelineSpec, layers: list[dict], seed: int | None, root: Path,
         sources: dict[str, StageInfo]) -> list[Planned]:
    """Resolve every stage's config and identity before anything runs.

    A stage's identity hashes its resolved config and its source's identity, so the whole
    chain's identities follow from the configs alone: a resumed run can tell which finished
    folders are still valid without running anything.
    """
    ids = {sid: info.id for sid, info in sources.items()}
    configs = {sid: info.record["config"] for sid, info in sources.items()}
    out = []
    for s in spec.stages:
        base = [configs[s.from_]] if s.from_ else []
        cfg = resolve(*base, spec.config, s.set, *layers, seed=seed)
        ids[s.id] = identity(s.stage, cfg, ids[s.from_] if s.from_ else "")
        configs[s.id] = cfg.dump()
        out.append(Planned(s, cfg, ids[s.id], root / s.id))
    return out


def preflight(stages: list[Planned], sources: dict[str, StageInfo]) -> None:
    """Every prune stage's method checks on a fresh model of its architecture (bad layer names,
    a layer a channel sparsity would empty, ...): a mistake in the last stage is reported before
    the first one trains."""
    from compress.stages.train_stages import check_device, check_prune
    planned = {p.spec.id: p for p in stages}
    for p in stages:
        check_device(p.spec.stage, p.cfg)
        if p.spec.stage != "prune":
            continue
        src = p.spec.from_
        if src in sources:
            record = sources[src].record
            dense, imported = record.get("dense_train"), record.get("dense_train", {}) is None
        else:
            dense = planned[src].cfg.train.model_dump() if src in planned else None
            imported = src in planned and planned[src].spec.stage == "import"
        check_prune(p.cfg, dense, imported)


def stage_status(p: Planned) -> tuple[str, StageInfo | None]:
    """done (intact, same identity) | stale (different config) | damaged | missing."""
    return stage_check(p)[:2]


def stage_check(p: Planned) -> tuple[str, StageInfo | None, str | None]:
    """stage_status, and for a damaged folder why (a file missing, edited, unreadable, or
    outside the folder): a resumed pipeline re-runs a damaged stage like a stale one."""
    if not (p.out / STAGE_FILE).is_file():
        return "missing", None, None
    try:
        info = read_stage(p.out)
    except UserError as e:
        return "damaged", None, str(e)
    return ("done", info, None) if info.id == p.id else ("stale", info, None)


def run_pipeline(spec: PipelineSpec, env: StageEnv, layers: list[dict], seed: int | None,
                 out: Path | None = None, resolve_source=None, fresh: bool = False,
                 tags: dict[str, str] | None = None) -> dict:
    """Run every stage in order; returns {"run_id", "stages": {id: record}}.

    `resolve_source(ref) -> StageInfo` turns a `sources` entry into a stage (folder or run id).
    Stages whose folder under the pipeline's root is intact and has the same identity are
    reused (unless `fresh`), and the pipeline's MLflow parent run is resumed, so a killed
    pipeline re-run with the same command continues where it stopped.

    Under torchrun rank 0 alone holds the lock, cleans up, reads and writes pipeline.json and
    decides which stages to reuse; the other ranks follow its decisions (dist.on_main).
    """
    from compress.data.filebacked import one_scan_per_command
    with one_scan_per_command():
        return _run_pipeline(spec, env, layers, seed, out, resolve_source, fresh, tags)


def _run_pipeline(spec: PipelineSpec, env: StageEnv, layers: list[dict], seed: int | None,
                  out: Path | None, resolve_source, fresh: bool,
                  tags: dict[str, str] | None) -> dict:
    root = Path(out) if out else env.root / spec.name
    infos = {sid: resolve_source(ref) for sid, ref in spec.sources.items()} if spec.sources else {}
    stages = plan(spec, layers, seed, root, infos)  # every config is checked before anything runs
    preflight(stages, infos)
    records: dict[str, dict] = {}
    new_root = not root.exists() or not any(root.iterdir())
    with pipeline_lock(root), _removed_if_nothing_finished(root, records, new_root):
        dist.on_main(lambda: _drop_unfinished(root, stages))
        state = dist.on_main(lambda: _load_state(root, spec.name, env)) if not fresh else None
        with env.tracker.run(spec.name, tags={"compress.pipeline": spec.name, **(tags or {})},
                             run_id=state) as parent:
            dist.on_main(lambda: _save_state(root, spec.name, env, parent))
            if state:
                env.tracker.end_stale_children(parent)
            for p in stages:
                src = infos.get(p.spec.from_) if p.spec.from_ else None
                status, done, problem = dist.on_main(lambda: stage_check(p)) if not fresh \
                    else ("missing", None, None)
                if status == "done":
                    env.log(f"{p.spec.id}: reused {p.out} (same config and inputs, files intact)")
                    complete_run(env, done)  # its run, if the last attempt lost it midway
                    records[p.spec.id] = {**done.record, "out_dir": str(p.out), "reused": True}
                else:
                    if problem:
                        env.log(f"{p.spec.id}: running it again, its folder is damaged: {problem}")
                    records[p.spec.id] = run_one(p.spec.stage, p.cfg, env, src, p.out)
                infos[p.spec.id] = StageInfo(Path(records[p.spec.id]["out_dir"]), records[p.spec.id])
    return {"run_id": parent, "pipeline": spec.name, "stages": records}


def status_rows(spec: PipelineSpec, layers: list[dict], seed: int | None, root: Path,
                resolve_source) -> list[dict]:
    from compress.data.filebacked import one_scan_per_command
    infos = {sid: resolve_source(ref) for sid, ref in spec.sources.items()} if spec.sources else {}
    rows = []
    with one_scan_per_command():
        planned = plan(spec, layers, seed, root, infos)
    for p in planned:
        status, info, problem = stage_check(p)
        rows.append({"id": p.spec.id, "stage": p.spec.stage, "status": status, "dir": str(p.out),
                     "run_id": info.record.get("run_id") if info else None, "identity": p.id[:12],
                     **({"problem": problem} if problem else {})})
    return rows


STATE_FILE = "pipeline.json"


def _load_state(root: Path, name: str, env: StageEnv) -> str | None:
    """The parent run to resume: the one this root's last run used, in the same store."""
    import json
    try:
        state = json.loads((root / STATE_FILE).read_text())
    except (OSError, ValueError):
        return None
    if state.get("pipeline") != name or state.get("tracking") != env.tracker.describe():
        return None
    run_id = state.get("run_id")
    return run_id if run_id and env.tracker.exists(run_id) else None


def _save_state(root: Path, name: str, env: StageEnv, run_id: str) -> None:
    import json
    root.mkdir(parents=True, exist_ok=True)
    tmp = root / f".{STATE_FILE}.tmp"
    tmp.write_text(json.dumps({"pipeline": name, "run_id": run_id,
                               "tracking": env.tracker.describe()}))
    tmp.replace(root / STATE_FILE)


def _drop_unfinished(root: Path, stages: list[Planned]) -> None:
    """Staging folders a killed process left behind (safe: we hold the root's lock)."""
    import shutil
    for p in stages:
        for tmp in root.glob(f".{p.out.name}.*"):
            if tmp.is_dir():
                shutil.rmtree(tmp, ignore_errors=True)


@contextlib.contextmanager
def _removed_if_nothing_finished(root: Path, records: dict, new_root: bool) -> Iterator[None]:
    """A pipeline that fails before its first stage finishes leaves no root folder behind."""
    try:
        yield
    except BaseException:
        if new_root and not records and dist.is_main():
            import shutil
            shutil.rmtree(root, ignore_errors=True)
        raise


@contextlib.contextmanager
def pipeline_lock(root: Path) -> Iterator[None]:
    """One process per pipeline root: a second one would race on the same stage folders.
    (Under torchrun, rank 0 holds it for all ranks.)"""
    with dist.main_context(lambda: _flock(root), share=False):
        yield


@contextlib.contextmanager
def _flock(root: Path) -> Iterator[None]:
    import fcntl
    root.mkdir(parents=True, exist_ok=True)
    with open(root / ".lock", "w") as fh:
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise UserError(f"another compress process is running a pipeline in {root}; wait for "
                            "it or use a different --out") from None
        yield


def run_one(stage: str, cfg, env: StageEnv, src: StageInfo | None, out: Path | None) -> dict:
    from compress.data.filebacked import one_scan_per_command
    with one_scan_per_command():
        return _run_one(stage, cfg, env, src, out)


def _run_one(stage: str, cfg, env: StageEnv, src: StageInfo | None, out: Path | None) -> dict:
    from compress.stages import export_stage, train_stages
    if src is not None:
        check_source(cfg, src)
    train_stages.check_device(stage, cfg)
    if stage == "import":
        return train_stages.import_model(cfg, env, out)
    if stage == "pretrain":
        return train_stages.pretrain(cfg, env, out)
    if stage == "export":  # nothing to train: rank 0 exports alone, the others get its record
        return dist.on_main(lambda: export_stage.export(cfg, src, env, out))
    fn = {"prune": train_stages.prune, "retrain": train_stages.retrain}[stage]
    return fn(cfg, src, env, out)


def check_source(cfg, src: StageInfo) -> None:
    """Later stages must use the data and model their source was trained with (options that
    only change loading speed, like data.num_workers, may differ)."""
    from compress.data.filebacked import identity_view
    for key in ("data", "model"):
        theirs, ours = src.record["config"][key], getattr(cfg, key)
        if key == "data":
            theirs, ours = identity_view(theirs), identity_view(ours)
        if ours != theirs:
            raise UserError(f"{key} differs from the source stage in {src.dir} ({theirs}); "
                            f"a stage reads its source's {key}, so do not change {key}.* here")
