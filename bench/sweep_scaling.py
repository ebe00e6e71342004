"""Wall time of one sweep on `--backend local` (1 and 2 worker processes) vs `--backend ray`
with 2 CPUs: a `ray start --head --num-cpus 2` cluster the script starts once (the driver
connects with --address, as to any cluster) and a private instance (`--backend ray` without
--address: Ray's start-up inside the command, what a user gets out of the box).

Every run is a fresh `compress sweep FILE --no-track --fresh --json` process timed from outside
(start-up, pretrain and cells included), one torch thread per process (OMP_NUM_THREADS=1), so
local-1 is one core and the others two. The variants run round-robin, the start rotated each
round; ratios are paired within a round. Two grid sizes (N and 2N cells) separate Ray's fixed
cost (connect, worker start-up) from its cost per cell:

    overhead per cell = ((ray_2N - ray_N) - (local2_2N - local2_N)) * 2 slots / N

i.e. the extra slot-seconds each additional cell costs on Ray over the same two local workers.

  .venv/bin/python bench/sweep_scaling.py                # 8 and 16 cells, 50ep, 2 rounds
  .venv/bin/python bench/sweep_scaling.py --finetune 10ep --out bench/results/sweep_scaling_short_cells.json
  .venv/bin/python bench/sweep_scaling.py --quick        # 2 and 4 tiny cells, 1 round
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

BENCH = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH))
sys.path.insert(0, str(BENCH.parent))

from common import RESULTS_DIR, log, markdown_table, provenance, write_json  # noqa: E402

SLOTS = 2
# Per cell: magnitude or random pruning of a 20-256-1 MLP on 3D-XOR, then fine-tuning
# (--finetune: measured per cell here, one thread: 10ep 0.5-0.8 s, 50ep 1-3 s).
CONFIG = """
name: {name}
config:
  data: {{name: xor, k: 3, p: 20}}
  model: {{name: mlp, hidden: [256]}}
  train: {{duration: {pretrain}}}
grid:
  method: [magnitude, random]
  density: {densities}
  method.finetune: [{finetune}]
  seed: {seeds}
resources: {{num_cpus: 1}}
storage: {storage}
"""


def sweep_file(work: Path, cells: int, quick: bool, finetune: str) -> Path:
    """A grid of `cells` cells (methods x densities x seeds); --quick: tiny epochs."""
    densities = [0.1] if quick else [0.1, 0.05]
    seeds = list(range(max(1, cells // (2 * len(densities)))))
    path = work / f"scaling-{cells}.yaml"
    path.write_text(CONFIG.format(name=f"scaling-{cells}", pretrain="1ep" if quick else "5ep",
                                  finetune="1ep" if quick else finetune, densities=densities,
                                  seeds=seeds, storage=work / "shared"))
    return path


def command(variant: str, spec: Path, out: Path, address: str) -> list[str]:
    base = [sys.executable, "-m", "compress", "sweep", str(spec), "--no-track", "--fresh",
            "--json", "--out", str(out)]
    return base + {"local-1": ["--workers", "1"], "local-2": ["--workers", str(SLOTS)],
                   "ray-cluster": ["--backend", "ray", "--address", address],
                   "ray-private": ["--backend", "ray"]}[variant]


def run(variant: str, spec: Path, work: Path, address: str, env: dict) -> dict:
    out = Path(tempfile.mkdtemp(dir=work))
    started = time.perf_counter()
    r = subprocess.run(command(variant, spec, out, address), env=env, capture_output=True,
                       text=True, cwd=work)
    wall = time.perf_counter() - started
    if r.returncode != 0:
        raise SystemExit(f"{variant} failed ({r.returncode}):\n{r.stderr[-3000:]}")
    rows = json.loads(r.stdout)["rows"]
    return {"variant": variant, "cells": len(rows), "wall_s": round(wall, 3),
            "cell_seconds": [row["seconds"] for row in rows],
            "metrics": {row["name"]: row["metrics"] for row in rows}}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--cells", type=int, default=8, help="N: the small grid (the large is 2N)")
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--finetune", default="50ep", help="each cell's fine-tuning (its length)")
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args()
    if args.quick:
        args.cells, args.rounds = 2, 1
    out_path = args.out or RESULTS_DIR / f"sweep_scaling{'_quick' if args.quick else ''}.json"

    from tests.fixtures_ray import RAY_ENV, RayCluster
    work = Path(tempfile.mkdtemp(prefix="sweep-scaling-"))
    env = {**os.environ, **RAY_ENV}
    env.pop("MLFLOW_TRACKING_URI", None)
    specs = {n: sweep_file(work, n, args.quick, args.finetune) for n in (args.cells, 2 * args.cells)}
    plan = [("local-1", args.cells), ("local-2", args.cells), ("local-2", 2 * args.cells),
            ("ray-cluster", args.cells), ("ray-cluster", 2 * args.cells),
            ("ray-private", args.cells)]
    result = {"provenance": provenance(), "slots": SLOTS, "cells": [args.cells, 2 * args.cells],
              "config": specs[args.cells].read_text(), "runs": []}
    cluster = RayCluster(num_cpus=SLOTS)
    try:
        cluster.wait_ready()
        result["ray_head_start_s"] = round(cluster.start_seconds, 2)
        log(f"ray head up in {cluster.start_seconds:.1f} s at {cluster.address}")
        for rnd in range(args.rounds):
            shift = rnd % len(plan)
            for variant, n in plan[shift:] + plan[:shift]:
                record = run(variant, specs[n], work, cluster.address, env)
                result["runs"].append({"round": rnd, **record})
                log(f"round {rnd} {variant:<11} {n:>2} cells  {record['wall_s']:6.1f} s")
                write_json(out_path, result)
    finally:
        cluster.stop()
        shutil.rmtree(work, ignore_errors=True)
    result["summary"] = summarise(result["runs"], args.cells)
    result["provenance"]["loadavg_end"] = list(os.getloadavg())
    write_json(out_path, result)
    print(table(result["summary"], args.cells))
    log(f"wrote {out_path}")


def summarise(runs: list[dict], n: int) -> dict:
    """Medians per (variant, cells), paired ratios per round, Ray's overhead per cell."""
    def walls(variant: str, cells: int) -> dict[int, float]:
        return {r["round"]: r["wall_s"] for r in runs if r["variant"] == variant and r["cells"] == cells}

    def paired(a: dict[int, float], b: dict[int, float]) -> float:
        return statistics.median(a[k] / b[k] for k in a if k in b)

    out = {"median_wall_s": {}, "ratio_vs_local1": {}, "ratio_vs_local2": {}}
    for variant, cells in {(r["variant"], r["cells"]) for r in runs}:
        key = f"{variant}/{cells}"
        out["median_wall_s"][key] = statistics.median(walls(variant, cells).values())
        if cells == n:
            out["ratio_vs_local1"][key] = paired(walls(variant, n), walls("local-1", n))
            out["ratio_vs_local2"][key] = paired(walls(variant, n), walls("local-2", n))
    per_round = []
    for rnd in sorted({r["round"] for r in runs}):
        w = {(r["variant"], r["cells"]): r["wall_s"] for r in runs if r["round"] == rnd}
        extra = (w[("ray-cluster", 2 * n)] - w[("ray-cluster", n)]) - \
                (w[("local-2", 2 * n)] - w[("local-2", n)])
        per_round.append(extra * SLOTS / n)
    out["ray_overhead_per_cell_s"] = statistics.median(per_round)
    out["ray_overhead_per_cell_s_rounds"] = per_round
    # Fixed cost: what is left of the cluster run's extra wall time after the per-cell part.
    out["ray_fixed_overhead_s"] = statistics.median(
        (r_ray - r_loc) - out["ray_overhead_per_cell_s"] * n / SLOTS
        for r_ray, r_loc in zip(walls("ray-cluster", n).values(), walls("local-2", n).values()))
    same = {json.dumps(r["metrics"], sort_keys=True) for r in runs if r["cells"] == n}
    out["same_metrics_every_run"] = len(same) == 1
    return out


def table(summary: dict, n: int) -> str:
    rows = []
    for key in sorted(summary["median_wall_s"]):
        variant, cells = key.split("/")
        rows.append([variant, cells, f"{summary['median_wall_s'][key]:.1f}",
                     f"{summary['ratio_vs_local1'][key]:.2f}" if key in summary["ratio_vs_local1"] else "",
                     f"{summary['ratio_vs_local2'][key]:.2f}" if key in summary["ratio_vs_local2"] else ""])
    text = markdown_table(["variant", "cells", "wall s (median)", "vs local-1", "vs local-2"], rows)
    return (text + f"\n\nRay overhead per cell: {summary['ray_overhead_per_cell_s']:.2f} s "
            f"(rounds: {', '.join(f'{v:.2f}' for v in summary['ray_overhead_per_cell_s_rounds'])}); "
            f"fixed: {summary['ray_fixed_overhead_s']:.1f} s; same metrics in every run: "
            f"{summary['same_metrics_every_run']}")


if __name__ == "__main__":
    main()
