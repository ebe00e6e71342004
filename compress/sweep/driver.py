"""`compress sweep`: check every cell, open the sweep's MLflow run, hand the jobs to a backend,
write the rows to `<out>/results.json` (also logged to the sweep's run).

Every cell is a pipeline (prune, optionally export) reading the shared pretrain, tracked as its
own parent run tagged `compress.sweep` and `compress.cell.*`, with its headline metrics and its
row logged on that run; a sweep re-run reuses finished cells. `compress report` reads the
results.json or the MLflow runs, whichever backend ran the cells.
"""

from __future__ import annotations

import json
from pathlib import Path

from compress.sweep.jobs import cell_jobs, planned_tracking, pretrain_job, tracking_of
from compress.sweep.progress import CellProgress
from compress.sweep.spec import SweepSpec, cell_layer, cells

RESULTS_FILE = "results.json"
BACKENDS = ("local", "ray")


def make_backend(name: str, spec: SweepSpec, workers: int | None, address: str | None):
    """The backend, after the options that only fit the other one are refused."""
    from compress.errors import UserError
    if name not in BACKENDS:
        raise UserError(f"--backend {name!r}: use one of {', '.join(BACKENDS)}")
    if name == "local":
        if address is not None:
            raise UserError("--address is for --backend ray (a Ray cluster to run the cells on)")
        from compress.sweep.local import LocalBackend
        return LocalBackend(workers or 1)
    if workers is not None:
        raise UserError("--workers is for --backend local; with ray each cell is a Ray task "
                        "sized by `resources` in the sweep file")
    from compress.sweep.ray_backend import RayBackend
    return RayBackend(spec, address)


def run_sweep(spec: SweepSpec, env, layers: list[dict], seed: int | None, root: Path | None,
              *, runner, fresh: bool = False, track: bool = True,
              experiment: str = "compress") -> dict:
    """Run the sweep on `runner` (make_backend); returns the result written to results.json."""
    from compress.stages.runner import DEFAULT_ROOT

    root = Path(root) if root else DEFAULT_ROOT / spec.name
    grid = check_cells(spec, layers, seed)
    tracking = tracking_of(env.tracker, track, experiment)
    runner.check(tracking)
    progress = CellProgress(len(grid))
    with runner.connected(), env.tracker.run(spec.name, tags={"compress.sweep": spec.name,
                                                              "compress.kind": "sweep"}) as parent:
        pre = pretrain_job(spec, layers, seed, runner.stage_root(root), tracking, parent,
                           fresh=fresh, progress=env.progress and runner.name == "local",
                           reuse_tracked=runner.reuse_tracked)
        jobs = cell_jobs(spec, grid, pre, progress=env.progress and runner.in_process())
        source, rows = runner.run(pre, jobs, progress, env.tracker)
        _end_stale_cells(env.tracker, parent)
        result = {"sweep": spec.name, "run_id": parent, "root": str(root.absolute()),
                  "backend": runner.name, "address": getattr(runner, "address", None),
                  "pretrain": source["run_id"] if source else rows[0].get("pretrain_run_id"),
                  "rows": rows}
        root.mkdir(parents=True, exist_ok=True)
        (root / RESULTS_FILE).write_text(json.dumps(result, indent=2, default=str))
        _log_file(env.tracker, root / RESULTS_FILE, "sweep")
    return result


def check_cells(spec: SweepSpec, layers: list[dict], seed: int | None) -> list[dict]:
    """The grid's cells, every cell's config checked (before any pretrain or store)."""
    from compress.config import resolve
    grid = cells(spec)
    for cell in grid:
        layer, cell_seed = cell_layer(cell)
        resolve(spec.config, layer, *layers, seed=cell_seed if cell_seed is not None else seed)
    return grid


def _end_stale_cells(tracker, parent: str) -> None:
    """Runs a dead worker left RUNNING (its cell was retried as a new run elsewhere) end KILLED,
    with the runs nested in them."""
    stale = tracker.end_stale_children(parent)
    while stale:
        stale = [child for run_id in stale for child in tracker.end_stale_children(run_id)]


def _log_file(tracker, path: Path, artifact_path: str) -> None:
    """Log one file (the tracker logs folders) under the active run."""
    import shutil
    import tempfile
    with tempfile.TemporaryDirectory() as tmp:
        shutil.copy(path, tmp)
        tracker.log_artifacts(Path(tmp), artifact_path)
