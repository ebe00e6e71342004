"""Run one sweep job (compress/sweep/jobs.py) in this process: here, in a pool worker, or on a
Ray node. Nothing here reads the driver's working directory: paths come from the job (absolute)
or are this machine's scratch folder, inputs from a shared folder or the MLflow store.

Resuming: a job's stage folders are reused as in any pipeline (same identity, files intact),
and with `reuse_tracked` a missing or stale folder is first filled from a FINISHED MLflow run
of the same identity, so a cell retried on another machine, or a sweep re-run on a new
cluster, does not redo a stage that finished anywhere.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import socket
import tempfile
import time
from pathlib import Path
from typing import Iterator

from compress.errors import UserError
from compress.sweep.jobs import pipeline_of
from compress.sweep.spec import cell_name, headline

SCRATCH_ENV = "COMPRESS_SCRATCH"
ROW_TAG = "compress.row"


def scratch_root() -> Path:
    """This machine's folder for jobs without a shared root: $COMPRESS_SCRATCH, else in /tmp."""
    return Path(os.environ.get(SCRATCH_ENV) or
                Path(tempfile.gettempdir()) / f"compress-{os.getuid()}") / "sweeps"


def run_pretrain(job: dict) -> dict:
    """The shared pretrain; returns what a cell needs to find it (run id, folder, identity)."""
    from compress.stages.pipeline import run_pipeline

    started = time.perf_counter()
    with _job_env(job) as env:
        out = _base(job) / job["folder"]
        spec = pipeline_of(job)
        if job["reuse_tracked"] and not job["fresh"]:
            _fill_from_tracking(spec, job, out, env.tracker, {})
        result = run_pipeline(spec, env, job["layers"], job["seed"], out, fresh=job["fresh"],
                              tags=job["tags"])
    dense = result["stages"]["dense"]
    return {"run_id": dense["run_id"], "dir": dense["out_dir"], "id": dense["id"],
            "reused": bool(dense.get("reused")), "host": socket.gethostname(),
            "seconds": round(time.perf_counter() - started, 3)}


def run_cell(job: dict, source: dict) -> dict:
    """One cell's pipeline over the pretrain `source`; returns its row (also kept in MLflow)."""
    from compress.stages.artifacts import read_stage
    from compress.stages.pipeline import run_pipeline

    started = time.perf_counter()
    with _job_env(job) as env:
        base = _base(job)
        dense = _pretrain_stage(source, job, env.tracker, base)
        spec = pipeline_of(job, {"dense": str(dense.dir)})
        out = base / job["folder"]
        if job["reuse_tracked"] and not job["fresh"]:
            _fill_from_tracking(spec, job, out, env.tracker, {"dense": dense})
        # Which process ran the cell: where to look for its logs, or what to kill.
        tags = {**job["tags"], "compress.host": socket.gethostname(), "compress.pid": str(os.getpid())}
        result = run_pipeline(spec, env, job["layers"], job["seed"], out, resolve_source=read_stage,
                              fresh=job["fresh"], tags=tags)
        prune = result["stages"]["prune"]
        row = {"cell": job["cell"], "name": cell_name(job["cell"]), "run_id": result["run_id"],
               "prune_run_id": prune["run_id"], "dir": prune["out_dir"],
               "metrics": headline(prune), "reused": bool(prune.get("reused")),
               "sha256": {k: v for k, v in prune.get("sha256", {}).items() if k in ("masks", "weights")},
               "cell_id": job["tags"].get("compress.cell_id"), "pretrain_run_id": source["run_id"],
               "host": socket.gethostname(), "seconds": round(time.perf_counter() - started, 3)}
        if job["tracking"]["enabled"]:
            # The row on the cell's run: the report reads the metrics, a re-run the whole row.
            with env.tracker.run(spec.name, run_id=result["run_id"]):
                env.tracker.log_metrics(row["metrics"])
                env.tracker.set_tags({ROW_TAG: json.dumps(row)})
    return row


def tracked_row(run: dict) -> dict | None:
    """The row a finished cell run holds (None if it has none, e.g. killed before the end)."""
    try:
        return json.loads(run["tags"][ROW_TAG])
    except (KeyError, ValueError):
        return None


@contextlib.contextmanager
def _job_env(job: dict) -> Iterator:
    """A StageEnv tracking to the job's store (its URI, not whatever this process has set)."""
    from compress.stages.runner import StageEnv
    from compress.tracking import make_tracker

    tracking = job["tracking"]
    with _env_var("MLFLOW_TRACKING_URI", tracking["uri"] if tracking["enabled"] else None):
        yield StageEnv(tracker=make_tracker(tracking["enabled"], tracking["experiment"]),
                       progress=job["progress"])


@contextlib.contextmanager
def _env_var(key: str, value: str | None) -> Iterator[None]:
    if value is None:
        yield
        return
    before = os.environ.get(key)
    os.environ[key] = value
    try:
        yield
    finally:
        if before is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = before


def _base(job: dict) -> Path:
    return Path(job["root"]) if job["root"] else scratch_root() / job["sweep"]


def _pretrain_stage(source: dict, job: dict, tracker, base: Path):
    """The pretrain's folder where it was written if this machine sees it, else fetched from
    the tracking store into this machine's copy (one download per machine and pretrain)."""
    from compress.stages.artifacts import STAGE_FILE, read_stage

    here = Path(source["dir"])
    if (here / STAGE_FILE).is_file():
        info = read_stage(here)
        if info.id == source["id"]:
            return info
    if not job["tracking"]["enabled"]:
        raise UserError(f"the shared pretrain {here} is not on {socket.gethostname()} and tracking "
                        "is off: give the sweep file a `storage:` folder every Ray node mounts, or "
                        "track to an MLflow server")
    return _fetch(tracker, source["run_id"], base / "sources" / source["run_id"], source["id"])


def _fill_from_tracking(spec, job: dict, out: Path, tracker, sources: dict) -> None:
    """Stage folders missing here but FINISHED in the store (same identity) are fetched, in
    pipeline order, so the pipeline then reuses them instead of running them again."""
    from compress.stages.pipeline import plan, stage_status

    for planned in plan(spec, job["layers"], job["seed"], out, sources):
        if stage_status(planned)[0] == "done":
            continue
        runs = tracker.find_runs({"compress.id": planned.id, "compress.stage": planned.spec.stage})
        if not runs:
            return  # later stages read this one: nothing after it can be reused either
        _fetch(tracker, runs[-1]["run_id"], planned.out, planned.id)


def _fetch(tracker, run_id: str, dest: Path, identity: str):
    """The run's stage folder (of this identity) copied to `dest`, atomically; concurrent
    callers wait for the first and then reuse its copy."""
    from compress.stages.artifacts import STAGE_FILE, read_stage, staging

    dest.parent.mkdir(parents=True, exist_ok=True)
    with _locked(dest.parent / f".{dest.name}.fetch.lock"):
        if (dest / STAGE_FILE).is_file():
            with contextlib.suppress(UserError):
                info = read_stage(dest)
                if info.id == identity:
                    return info
        with tempfile.TemporaryDirectory(prefix=f".fetch-{dest.name}-", dir=dest.parent) as tmp:
            found = read_stage(tracker.fetch_run(run_id, Path(tmp)))
            if found.id != identity:
                raise UserError(f"MLflow run {run_id} holds stage {found.id[:12]}..., not "
                                f"{identity[:12]}...; re-run the sweep with --fresh")
            with staging(dest) as folder:
                shutil.copytree(found.dir, folder, dirs_exist_ok=True)
    return read_stage(dest)


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    import fcntl
    with open(path, "w") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        yield
