"""A sweep's work as plain data: one job for the shared pretrain, one per cell.

A job is a JSON-able dict that says everything a process needs to run it, on this machine or
another one: the pipeline (name, base config, stages), the config layers after it (already
loaded: no file the worker would have to read), the seed, where its stage folders go (an
absolute root, or None for the worker's own scratch folder), how to reach the tracking store
(URI and experiment) and the MLflow tags that file its runs under the sweep. A cell job gets
its input, the pretrain, as a second plain dict (run id, folder, identity) when the pretrain
is done. compress/sweep/worker.py runs them; the backends only decide where.

    {"kind": "cell", "sweep": "s", "name": "s.magnitude-d0.5-s0", "cell": {...},
     "config": {}, "stages": [{"id": "prune", "stage": "prune", "from": "dense"}],
     "layers": [sweep config, cell layer, --config/--set layers], "seed": 0,
     "root": "/abs/root" | None, "folder": "cells/magnitude-d0.5-s0",
     "tracking": {"enabled": true, "uri": "http://mlflow:5000", "experiment": "compress"},
     "tags": {"compress.sweep": "s", "compress.kind": "cell", "compress.cell_id": ..., ...},
     "fresh": false, "progress": false, "reuse_tracked": true}
"""

from __future__ import annotations

import json
from pathlib import Path

from compress.sweep.spec import SweepSpec, cell_layer, cell_name, cell_stages

PRETRAIN_FOLDER = "pretrain"
CELLS_FOLDER = "cells"


def tracking_of(tracker, enabled: bool, experiment: str) -> dict:
    """Where jobs log, as data: off, or this store's URI (absolute for a local sqlite store)."""
    return {"enabled": enabled, "uri": tracker.describe() if enabled else None,
            "experiment": experiment}


def planned_tracking(enabled: bool, experiment: str) -> dict:
    """The same, before any tracker (or store file) exists: backends check it first."""
    from compress.tracking.mlflow_tracker import default_tracking_uri
    return {"enabled": enabled, "uri": default_tracking_uri() if enabled else None,
            "experiment": experiment}


def pretrain_job(spec: SweepSpec, layers: list[dict], seed: int | None, root: Path | None,
                 tracking: dict, parent: str, *, fresh: bool, progress: bool,
                 reuse_tracked: bool) -> dict:
    from compress.config import resolve
    from compress.models.base import arrives_trained
    # A trained model (model.weights, models:/) is imported once and shared, not pretrained.
    trained = arrives_trained(resolve(spec.config, spec.pretrain, *layers, seed=seed).model)
    dense = {"id": "dense", "stage": "import"} if trained else \
        {"id": "dense", "stage": "pretrain", "set": spec.pretrain}
    return {
        "kind": "pretrain", "sweep": spec.name, "name": f"{spec.name}.pretrain", "cell": None,
        "config": spec.config, "stages": [dense],
        "layers": layers, "seed": seed, "root": _abs(root), "folder": PRETRAIN_FOLDER,
        "tracking": tracking, "fresh": fresh, "progress": progress, "reuse_tracked": reuse_tracked,
        "tags": {"compress.sweep": spec.name, "compress.kind": "pretrain",
                 **_parent_tag(parent)},
    }


def cell_jobs(spec: SweepSpec, grid: list[dict], pretrain: dict, *, progress: bool) -> list[dict]:
    """One job per cell, sharing the pretrain job's store, root and flags."""
    jobs = []
    for cell in grid:
        layer, cell_seed = cell_layer(cell)
        name = cell_name(cell)
        jobs.append({
            **{k: pretrain[k] for k in ("sweep", "root", "tracking", "fresh", "reuse_tracked")},
            "kind": "cell", "name": f"{spec.name}.{name}", "cell": cell, "config": {},
            "stages": cell_stages(spec),
            # The sweep's config comes first: the cell's method and grid keys refine it.
            "layers": [spec.config, layer, *pretrain["layers"]],
            "seed": cell_seed if cell_seed is not None else pretrain["seed"],
            "folder": f"{CELLS_FOLDER}/{name}", "progress": progress,
            "tags": {"compress.sweep": spec.name, "compress.kind": "cell",
                     **{f"compress.cell.{k}": json.dumps(v) for k, v in cell.items()},
                     **{k: v for k, v in pretrain["tags"].items() if k == "mlflow.parentRunId"}},
        })
    _tag_identities(pretrain, jobs)
    return jobs


def pipeline_of(job: dict, sources: dict[str, str] | None = None):
    from compress.stages.pipeline import PipelineSpec
    return PipelineSpec(name=job["name"], config=job["config"], sources=sources or {},
                        stages=job["stages"])


def _tag_identities(pretrain: dict, jobs: list[dict]) -> None:
    """Tag every cell with the identity of its last stage, computed from configs alone (as a
    pipeline plans them): equal identities mean equal work, so a finished cell run with the same
    `compress.cell_id` can stand in for running the cell again, wherever it ran."""
    from compress.stages.artifacts import StageInfo
    from compress.stages.pipeline import plan

    nowhere = Path(".")
    dense = plan(pipeline_of(pretrain), pretrain["layers"], pretrain["seed"], nowhere, {})[-1]
    info = StageInfo(nowhere, {"stage": dense.spec.stage, "id": dense.id,
                               "config": dense.cfg.dump()})
    for job in jobs:
        last = plan(pipeline_of(job, {"dense": "."}), job["layers"], job["seed"], nowhere,
                    {"dense": info})[-1]
        job["tags"]["compress.cell_id"] = last.id


def _parent_tag(parent: str | None) -> dict[str, str]:
    return {"mlflow.parentRunId": parent} if parent and not parent.startswith("local-") else {}


def _abs(root: Path | None) -> str | None:
    return str(Path(root).absolute()) if root is not None else None
