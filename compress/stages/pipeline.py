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

from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from compress.config import format_validation, load_yaml, resolve
from compress.errors import UserError
from compress.stages.artifacts import StageInfo
from compress.stages.runner import StageEnv

StageName = Literal["pretrain", "prune", "retrain", "export"]


class StageSpec(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True)
    id: str = Field(pattern=r"^[A-Za-z0-9_.-]+$")
    stage: StageName
    from_: str | None = Field(None, alias="from")
    set: dict[str, Any] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _needs_source(self):
        if self.stage != "pretrain" and not self.from_:
            raise ValueError(f"stage {self.id!r} ({self.stage}) needs `from: <earlier stage id>`")
        return self


class PipelineSpec(BaseModel):
    model_config = ConfigDict(extra="forbid")
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
    try:
        return PipelineSpec(**load_yaml(path, "pipeline file"))
    except ValidationError as e:
        raise UserError(f"{path}: " + format_validation(e)) from None


def run_pipeline(spec: PipelineSpec, env: StageEnv, layers: list[dict], seed: int | None,
                 out: Path | None = None, resolve_source=None) -> dict:
    """Run every stage in order; returns {"run_id", "stages": {id: record}}.

    `resolve_source(ref) -> StageInfo` turns a `sources` entry into a stage (folder or run id).
    """
    root = Path(out) if out else env.root / spec.name
    for s in spec.stages:  # every stage's config is checked before anything runs
        resolve(spec.config, s.set, *layers, seed=seed)
    infos = {sid: resolve_source(ref) for sid, ref in spec.sources.items()} if spec.sources else {}
    records: dict[str, dict] = {}
    with env.tracker.run(spec.name, tags={"compress.pipeline": spec.name}) as parent:
        for s in spec.stages:
            src = infos.get(s.from_) if s.from_ else None
            base = [src.record["config"]] if src else []
            cfg = resolve(*base, spec.config, s.set, *layers, seed=seed)
            records[s.id] = run_one(s.stage, cfg, env, src, root / s.id)
            infos[s.id] = StageInfo(Path(records[s.id]["out_dir"]), records[s.id])
    return {"run_id": parent, "pipeline": spec.name, "stages": records}


def run_one(stage: str, cfg, env: StageEnv, src: StageInfo | None, out: Path | None) -> dict:
    from compress.stages import export_stage, train_stages
    if src is not None:
        check_source(cfg, src)
    if stage == "pretrain":
        return train_stages.pretrain(cfg, env, out)
    fn = {"prune": train_stages.prune, "retrain": train_stages.retrain,
          "export": export_stage.export}[stage]
    return fn(cfg, src, env, out)


def check_source(cfg, src: StageInfo) -> None:
    """Later stages must use the data and model their source was trained with."""
    for key in ("data", "model"):
        theirs = src.record["config"][key]
        if getattr(cfg, key) != theirs:
            raise UserError(f"{key} differs from the source stage in {src.dir} ({theirs}); "
                            f"a stage reads its source's {key}, so do not change {key}.* here")
