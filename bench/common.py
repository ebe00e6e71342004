"""Shared helpers of the benchmarks: run stages in-process (no MLflow), provenance, JSON, tables.

The benchmarks drive the package's own stage functions through `compress.stages.pipeline.run_one`
with a NullTracker, so what is measured is exactly what `compress pipeline run` would do.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import json
import math
import os
import platform
import shlex
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Iterator

import torch

from compress.config import resolve
from compress.stages.artifacts import StageInfo
from compress.stages.pipeline import run_one
from compress.stages.runner import StageEnv
from compress.tracking.base import NullTracker

BENCH_DIR = Path(__file__).resolve().parent
RESULTS_DIR = BENCH_DIR / "results"

_T0 = time.perf_counter()


def log(msg: str) -> None:
    """A progress line with the elapsed wall time, flushed at once (the runs go to nohup logs)."""
    print(f"[{time.perf_counter() - _T0:7.1f}s] {msg}", flush=True)


def make_env(root: Path) -> StageEnv:
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    return StageEnv(tracker=NullTracker(), root=root, progress=False)


def stage(env: StageEnv, name: str, cfg, src: dict | None = None, out: Path | None = None) -> dict:
    """Run one stage (pretrain / prune / retrain / export) from an earlier stage's record."""
    info = StageInfo(Path(src["out_dir"]), src) if src is not None else None
    return run_one(name, cfg, env, info, out)


def cfg_of(*layers: dict, seed: int):
    return resolve(*layers, seed=seed)


def provenance() -> dict:
    """What produced a result: the exact command, versions, machine, date."""
    import numpy
    out = {
        "command": " ".join(shlex.quote(a) for a in [sys.executable, *sys.argv]),
        "cwd": os.getcwd(),
        "date": _dt.datetime.now().astimezone().isoformat(timespec="seconds"),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "numpy": numpy.__version__,
        "torch_threads": torch.get_num_threads(),
        "cpu_count": os.cpu_count(),
        "platform": platform.platform(),
        "loadavg_start": list(os.getloadavg()),
    }
    try:
        import onnxruntime
        out["onnxruntime"] = onnxruntime.__version__
    except ImportError:
        pass
    try:
        import subprocess
        out["git_head"] = subprocess.run(["git", "rev-parse", "HEAD"], cwd=BENCH_DIR.parent,
                                         capture_output=True, text=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "compress"], cwd=BENCH_DIR.parent,
                               capture_output=True, text=True).stdout
        out["git_dirty_compress"] = bool(dirty.strip())
    except OSError:
        pass
    return out


def write_json(path: Path, payload: dict) -> None:
    """Atomic write, so a poll of a half-finished background run never reads a torn file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(payload, indent=2, sort_keys=False, default=str) + "\n")
    os.replace(tmp, path)


@contextlib.contextmanager
def bench_run(args, prefix: str) -> Iterator[tuple[dict, StageEnv]]:
    """Thread count, provenance and a stage env over args.work (or a temp dir, removed after)."""
    torch.set_num_threads(args.threads)
    meta = provenance()
    work = args.work or Path(tempfile.mkdtemp(prefix=prefix))
    log(f"work dir {work}; results -> {args.out}")
    try:
        yield meta, make_env(work)
    finally:
        if args.work is None:
            shutil.rmtree(work, ignore_errors=True)


def print_summary(table: str, args, payload: dict) -> None:
    print()
    print(table)
    print(f"\nresults: {args.out}  (total {payload['wall_seconds_total']:.0f} s)")


def save_results(path: Path, benchmark: str, status: str, meta: dict, args, protocol: dict,
                 started: float, results: dict) -> dict:
    """Write a benchmark's JSON: provenance, options, protocol, wall time and results."""
    payload = {
        "benchmark": benchmark, "status": status, **meta,
        "options": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
        "protocol": protocol,
        "wall_seconds_total": round(time.perf_counter() - started, 1),
        "loadavg_end": list(os.getloadavg()),
        "results": results,
    }
    write_json(path, payload)
    return payload


def mean_std(values: list[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (nan for one value)."""
    vals = [v for v in values if v is not None and not math.isnan(v)]
    if not vals:
        return float("nan"), float("nan")
    return statistics.fmean(vals), (statistics.stdev(vals) if len(vals) > 1 else float("nan"))


def fmt_ms(values: list[float], scale: float = 100.0, digits: int = 2) -> str:
    """'mean ± std' of values * scale; just the mean for a single value."""
    m, s = mean_std(values)
    if math.isnan(m):
        return "—"
    if math.isnan(s):
        return f"{m * scale:.{digits}f}"
    return f"{m * scale:.{digits}f} ± {s * scale:.{digits}f}"


def markdown_table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)
