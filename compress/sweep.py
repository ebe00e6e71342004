"""Sweeps: a grid of methods x densities x seeds (x any config key) over one shared pretrain.

A sweep file:
    name: lenet-sweep
    config: {data: {name: mnist5k}, model: {name: lenet300}}   # base of every stage
    pretrain: {train: {duration: 2000it}}                       # optional, the shared pretrain
    grid:
      method: [magnitude, random]       # method names
      density: [0.5, 0.2]               # method.density
      seed: [0, 1, 2]                   # the prune seed (the pretrain is shared)
      train.lr: [0.001, 0.003]          # any other config key
    export: false                       # also export every cell (default false)

Every cell is a pipeline (prune, optionally export) reading the shared pretrain, tracked as
its own parent run tagged `compress.sweep` and `compress.cell.*`, with its headline metrics
logged on that run; a sweep re-run reuses finished cells (see stages/pipeline.py). Cells run
in this process or in N worker processes. The sweep's rows go to `<root>/results.json`,
which `compress report` reads (or the MLflow runs, by tag).
"""

from __future__ import annotations

import itertools
import json
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from compress.config import format_validation, load_yaml, parse_set
from compress.errors import UserError

RESULTS_FILE = "results.json"


class SweepSpec(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str = Field(pattern=r"^[A-Za-z0-9_.-]+$")
    config: dict[str, Any] = Field(default_factory=dict)
    pretrain: dict[str, Any] = Field(default_factory=dict)
    grid: dict[str, list[Any]]
    export: bool = False

    @field_validator("grid")
    @classmethod
    def _grid(cls, grid: dict[str, list[Any]]) -> dict[str, list[Any]]:
        if not grid.get("method"):
            raise ValueError("grid.method must list at least one method")
        for key, values in grid.items():
            if not values:
                raise ValueError(f"grid.{key} is empty")
            if len(set(map(json.dumps, values))) != len(values):
                raise ValueError(f"grid.{key} lists a value twice")
        return grid


def load_sweep(path: Path) -> SweepSpec:
    try:
        return SweepSpec(**load_yaml(path, "sweep file"))
    except ValidationError as e:
        raise UserError(f"{path}: " + format_validation(e)) from None


def cells(spec: SweepSpec) -> list[dict[str, Any]]:
    """Every combination of the grid, in a stable order."""
    keys = list(spec.grid)
    return [dict(zip(keys, combo)) for combo in itertools.product(*(spec.grid[k] for k in keys))]


def cell_name(cell: dict[str, Any]) -> str:
    parts = [str(cell["method"])]
    for key, value in cell.items():
        if key == "method":
            continue
        short = {"density": "d", "seed": "s"}.get(key, key.replace(".", "_") + "=")
        parts.append(f"{short}{value}")
    return "-".join(parts).replace("/", "_")


def cell_layer(cell: dict[str, Any]) -> tuple[dict, int | None]:
    """The config layer a cell sets (method first, so method options refine it) and its seed."""
    layer: dict = {"method": {"name": cell["method"]}}
    for key, value in cell.items():
        if key in ("method", "seed"):
            continue
        path = f"method.{key}" if key == "density" else key
        layer = _merge(layer, parse_set(f"{path}={json.dumps(value)}"))
    return layer, cell.get("seed")


def _merge(a: dict, b: dict) -> dict:
    from compress.config import merge
    return merge(a, b)


def cell_spec(spec: SweepSpec, cell: dict) -> dict:
    stages = [{"id": "prune", "stage": "prune", "from": "dense"}]
    if spec.export:
        stages.append({"id": "export", "stage": "export", "from": "prune"})
    return {"name": f"{spec.name}.{cell_name(cell)}", "sources": {}, "stages": stages}


def headline(record: dict) -> dict[str, float]:
    m = record.get("metrics", {})
    return {k: float(v) for k, v in m.items() if k.startswith(("test_", "val_"))} | \
        {"density": float(record.get("density", 1.0))}


def run_cell(args: dict) -> dict:
    """One cell, in this process or a worker: its pipeline, then its row."""
    from compress.stages.artifacts import read_stage
    from compress.stages.pipeline import PipelineSpec, run_pipeline
    from compress.stages.runner import StageEnv
    from compress.tracking import make_tracker

    cell, layers = args["cell"], args["layers"]
    layer, seed = cell_layer(cell)
    env = StageEnv(tracker=make_tracker(args["track"], args["experiment"]), progress=args["progress"])
    tags = {"compress.sweep": args["sweep"], "compress.kind": "cell",
            **{f"compress.cell.{k}": json.dumps(v) for k, v in cell.items()},
            **({"mlflow.parentRunId": args["parent"]} if args.get("parent") else {})}
    dense = read_stage(Path(args["dense_dir"]))
    spec = PipelineSpec(**{**args["spec"], "sources": {"dense": str(dense.dir)}})
    result = run_pipeline(spec, env, [args["base"], layer, *layers],
                          seed if seed is not None else args["seed"],
                          Path(args["root"]), resolve_source=read_stage, tags=tags)
    prune = result["stages"]["prune"]
    row = {"cell": cell, "name": cell_name(cell), "run_id": result["run_id"],
           "prune_run_id": prune["run_id"], "dir": prune["out_dir"], "metrics": headline(prune),
           "reused": bool(prune.get("reused"))}
    if args["track"]:
        with env.tracker.run(spec.name, run_id=result["run_id"]):
            env.tracker.log_metrics(row["metrics"])
    return row


def run_sweep(spec: SweepSpec, env, layers: list[dict], seed: int | None, root: Path | None,
              workers: int = 1, fresh: bool = False, track: bool = True,
              experiment: str = "compress") -> dict:
    from compress.stages.pipeline import PipelineSpec, run_pipeline
    from compress.stages.runner import DEFAULT_ROOT

    root = Path(root) if root else DEFAULT_ROOT / spec.name
    grid = cells(spec)
    from compress.config import resolve
    for cell in grid:  # every cell's config is checked before the pretrain starts
        layer, cell_seed = cell_layer(cell)
        resolve(spec.config, layer, *layers, seed=cell_seed if cell_seed is not None else seed)
    with env.tracker.run(spec.name, tags={"compress.sweep": spec.name, "compress.kind": "sweep"}) as parent:
        dense_spec = PipelineSpec(name=f"{spec.name}.pretrain", config=spec.config,
                                  stages=[{"id": "dense", "stage": "pretrain", "set": spec.pretrain}])
        dense = run_pipeline(dense_spec, env, layers, seed, root / "pretrain", fresh=fresh)
        dense_dir = dense["stages"]["dense"]["out_dir"]
        jobs = [{"cell": c, "layers": layers, "base": spec.config, "seed": seed, "sweep": spec.name,
                 "spec": cell_spec(spec, c), "dense_dir": dense_dir, "track": track,
                 "experiment": experiment, "progress": env.progress and workers == 1,
                 "root": str(root / "cells" / cell_name(c)), "parent": parent} for c in grid]
        rows = _run_all(jobs, workers, env)
        result = {"sweep": spec.name, "run_id": parent, "root": str(root),
                  "pretrain": dense["stages"]["dense"]["run_id"], "rows": rows}
        (root / RESULTS_FILE).write_text(json.dumps(result, indent=2, default=str))
        _log_file(env.tracker, root / RESULTS_FILE, "sweep")
    return result


def _log_file(tracker, path: Path, artifact_path: str) -> None:
    """Log one file (the tracker logs folders) under the active run."""
    import shutil
    import tempfile
    with tempfile.TemporaryDirectory() as tmp:
        shutil.copy(path, tmp)
        tracker.log_artifacts(Path(tmp), artifact_path)


def _run_all(jobs: list[dict], workers: int, env) -> list[dict]:
    if workers <= 1:
        rows = []
        for i, job in enumerate(jobs):
            env.log(f"cell {i + 1}/{len(jobs)}: {cell_name(job['cell'])}")
            rows.append(run_cell(job))
        return rows
    import concurrent.futures as cf
    import multiprocessing as mp
    with cf.ProcessPoolExecutor(max_workers=workers, mp_context=mp.get_context("spawn"),
                                initializer=_worker_init) as pool:
        futures = [pool.submit(run_cell, job) for job in jobs]
        rows = []
        for i, fut in enumerate(futures):
            rows.append(fut.result())
            env.log(f"cell {i + 1}/{len(jobs)} done: {rows[-1]['name']}")
        return rows


def _worker_init() -> None:
    """Workers share the machine's cores: one torch thread each."""
    import torch
    torch.set_num_threads(1)
