"""Wall time of `compress pretrain` in one process vs `torchrun --nproc_per_node=2` (DDP, gloo).

Three variants per workload, round-robin (start rotated each round), each a fresh process:
  1proc-1thread   python -m compress pretrain ...            OMP_NUM_THREADS=1
  1proc-2threads  python -m compress pretrain ...            OMP_NUM_THREADS=2
  torchrun-2x1    torchrun --standalone --nproc_per_node=2 -m compress pretrain ...   1 thread each
Reported per run: the whole command's wall time (start-up included: torchrun starts an agent
and two workers, each importing torch) and the stage's own `seconds` from stage.json (model
build, training, evaluation, writing the folder; rank 0's for torchrun). Medians per variant.
The global batch is the same in every variant (batch_size is global under torchrun).

  .venv/bin/python bench/ddp_wall.py                 # xor-mlp1024 and lenet300, 3 rounds
  .venv/bin/python bench/ddp_wall.py --quick         # < 1 min smoke run
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import RESULTS_DIR, log, provenance, write_json  # noqa: E402

WORKLOADS = {
    # The CPNA demo's dense net: 60 -> 1024 -> 1 on 3000 XOR samples, Adam, batch 256.
    "xor-mlp1024": ["data.name=xor", "data.k=3", "data.p=60", "data.n_train=3000",
                    "data.n_val=1000", "data.n_test=3000", "model.name=mlp", "model.hidden=[1024]",
                    "train.optimizer=adam", "train.lr=0.003", "train.weight_decay=0.001",
                    "train.batch_size=256", "train.duration=60ep"],
    # The lottery-ticket default: LeNet-300-100 on the 5k MNIST subset, Adam, batch 60.
    "lenet300": ["data.name=mnist5k", "model.name=lenet300", "train.optimizer=adam",
                 "train.lr=0.0012", "train.weight_decay=0.0", "train.batch_size=60",
                 "train.duration=1000it"],
}
VARIANTS = ("1proc-1thread", "1proc-2threads", "torchrun-2x1")


def command(variant: str, sets: list[str], out: Path) -> tuple[list[str], dict]:
    args = ["-m", "compress", "pretrain", *[a for s in sets for a in ("--set", s)],
            "--no-track", "--json", "--out", str(out)]
    env = {**os.environ, "OMP_NUM_THREADS": "2" if variant == "1proc-2threads" else "1"}
    if variant == "torchrun-2x1":
        return [sys.executable, "-m", "torch.distributed.run", "--standalone",
                "--nproc_per_node=2", *args], env
    return [sys.executable, *args], env


def run(variant: str, sets: list[str], work: Path) -> dict:
    out = Path(tempfile.mkdtemp(dir=work)) / "stage"
    cmd, env = command(variant, sets, out)
    started = time.perf_counter()
    r = subprocess.run(cmd, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - started
    if r.returncode != 0:
        raise SystemExit(f"{variant} failed ({r.returncode}):\n{r.stderr[-3000:]}")
    record = json.loads((out / "stage.json").read_text())
    return {"wall_s": round(wall, 3), "stage_s": record["seconds"],
            "test_accuracy": record["metrics"]["test_accuracy"],
            "test_loss": record["metrics"]["test_loss"]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--workloads", default=",".join(WORKLOADS))
    ap.add_argument("--quick", action="store_true", help="1 round, short trainings")
    ap.add_argument("--out", type=Path, default=RESULTS_DIR / "ddp_wall.json")
    args = ap.parse_args()
    rounds = 1 if args.quick else args.rounds
    result = {"provenance": provenance(), "runs": {}, "median": {}}
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.workloads.split(","):
            sets = WORKLOADS[name] + (["train.duration=50it"] if args.quick else [])
            runs = {v: [] for v in VARIANTS}
            for r in range(rounds):
                for v in VARIANTS[r % 3:] + VARIANTS[:r % 3]:
                    runs[v].append(run(v, sets, Path(tmp)))
                    log(f"{name} round {r + 1} {v}: {runs[v][-1]}")
            result["runs"][name] = runs
            result["median"][name] = {v: {k: statistics.median(x[k] for x in rs)
                                          for k in ("wall_s", "stage_s")} for v, rs in runs.items()}
            log(f"{name} medians: {result['median'][name]}")
    result["provenance"]["loadavg_end"] = list(os.getloadavg())
    write_json(args.out, result)
    log(f"wrote {args.out}")


if __name__ == "__main__":
    main()
