"""Streaming data from files: does loading keep up with training, does memory stay bounded,
and are the in-memory built-ins as fast as before the data layer changed?

1. Throughput, on an image folder of 3x32x32 PNG digits (`--images` files, flat layout), all
   in this process, `--rounds` rounds (memory and streamed runs alternate who goes first),
   medians, and the median of the per-round streamed / memory ratios:
   - load rate: training batches (64) read through the split (DataLoader, num_workers 2), with
     augment none and standard, images/s, nothing else running (and with num_workers 0, 1);
   - training rate: forward + backward + Adam step on the same images held in memory, images/s;
   - streamed training rate: the same steps with batches read from the files (num_workers 2).
   Loading is not the bottleneck when streamed ~= in-memory training (and load >> training).
2. Peak memory: `compress pretrain` for one epoch (num_workers 2) on `--small` and `--images`
   images, each in its own process: ru_maxrss of that process and of its largest decoding
   worker (RUSAGE_CHILDREN). Goal: the larger folder within 10% of the smaller.
3. Built-ins before vs after: the same training run on in-memory data with the package at
   BASELINE (extracted with git archive) and at this checkout, `--pairs` pairs A B A B (the
   first of each pair alternates): fit() seconds measured inside each process, and the whole
   `compress pretrain` process' wall time. Ratio = now / baseline, median of paired ratios.
4. Fingerprint cost: the directory walk, a stat per file and the sampled contents that stage
   identities add, on both folders (median of 5 after one warm-up walk, so the OS caches them).

  .venv/bin/python bench/data_stream.py             # ~15 min on 2 cores
  .venv/bin/python bench/data_stream.py --quick     # smoke test, ~2 min
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

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(1, str(Path(__file__).resolve().parents[1]))  # tests.fixtures_data

import torch  # noqa: E402

from common import RESULTS_DIR, log, markdown_table, provenance, write_json  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
BASELINE = "2dd4454"  # the last commit before the data layer read batches by index
BATCH = 64
# The models trained in the throughput runs, and the share of --steps each takes (ResNet-18 is
# ~10x slower a step on this CPU).
MODELS = {"conv4": ({"name": "conv4", "width": 0.25, "batchnorm": True}, 1.0),
          "resnet18": ({"name": "torchvision:resnet18"}, 0.25)}
BUILTIN_RUNS = {  # in-memory data: the CPNA demo's MLP, LeNet-300-100, a small CNN
    "xor-mlp1024": {"data": {"name": "xor"}, "model": {"name": "mlp", "hidden": [1024]},
                    "train": {"duration": "20ep"}},
    "mnist5k-lenet300": {"data": {"name": "mnist5k"}, "model": {"name": "lenet300"},
                         "train": {"duration": "8ep", "batch_size": 60}},
    "digits-conv2": {"data": {"name": "digits"},
                     "model": {"name": "conv2", "width": 0.25, "batchnorm": True},
                     "train": {"duration": "8ep", "batch_size": 64}},
}


def parse_args(argv=None):
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--images", type=int, default=20000, help="images of the large folder")
    ap.add_argument("--small", type=int, default=2000, help="images of the small folder")
    ap.add_argument("--rounds", type=int, default=9, help="round-robin rounds, throughput")
    ap.add_argument("--steps", type=int, default=40, help="training steps per timed run "
                    "(conv4; ResNet-18 a quarter of them)")
    ap.add_argument("--pairs", type=int, default=5, help="A B pairs, before/after timing")
    ap.add_argument("--work", type=Path, default=None, help="scratch folder (default: a temp dir)")
    ap.add_argument("--quick", action="store_true", help="tiny smoke version")
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args(argv)
    if args.quick:
        args.images, args.small, args.rounds, args.steps, args.pairs = 1200, 300, 1, 8, 1
    args.out = args.out or RESULTS_DIR / ("data_stream_quick.json" if args.quick else "data_stream.json")
    return args


# ------------------------------------------------------------------ image folders
def write_folder(root: Path, n: int) -> Path:
    """n PNG files (3x32x32 digits, repeated), one folder per class."""
    from PIL import Image

    from tests.fixtures_data import digit_images
    images, labels = digit_images(32, 3)
    for k in range(n):
        i = k % len(images)
        folder = root / str(labels[i])
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray(images[i]).save(folder / f"{k:06d}.png")
    return root


# ------------------------------------------------------------------ 1. throughput
def throughput(root: Path, args) -> dict:
    from compress.data import load_dataset
    from compress.models import build_model
    stream = load_dataset("imagefolder", {"root": str(root), "num_workers": 2, "seed": 0})
    augmented = load_dataset("imagefolder", {"root": str(root), "num_workers": 2,
                                             "augment": "standard", "seed": 0})
    n = min(args.steps, len(stream.train) // BATCH) * BATCH  # whole batches the split holds
    order = torch.randperm(len(stream.train), generator=torch.Generator().manual_seed(0))[:n]
    lists = [order[i:i + BATCH] for i in range(0, n, BATCH)]
    log(f"decoding {n} training images into memory for the in-memory runs")
    memory = [(x.clone(), y.clone()) for x, y in stream.train.batches(lists)]
    timings: dict[str, list[float]] = {}

    def timed(key: str, fn) -> None:
        start = time.perf_counter()
        images = fn()
        timings.setdefault(key, []).append(images / (time.perf_counter() - start))

    def load(split) -> int:
        return sum(len(y) for _, y in split.batches(lists, augment=True, seed=1))

    models = {name: build_model(spec["name"], {k: v for k, v in spec.items() if k != "name"},
                                stream.in_shape, stream.num_classes)
              for name, (spec, _) in MODELS.items()}
    by_workers = {w: load_dataset("imagefolder", {"root": str(root), "num_workers": w, "seed": 0})
                  for w in (0, 1)}
    for r in range(args.rounds):
        for w, data in by_workers.items():  # context: what the decoding processes add
            timed(f"load_none_w{w}", lambda: load(data.train))
        timed("load_none", lambda: load(stream.train))
        timed("load_standard", lambda: load(augmented.train))
        for name, model in models.items():
            k = max(1, round(len(lists) * MODELS[name][1]))
            runs = [(f"{name}_memory", lambda: train_steps(model, memory[:k])),
                    (f"{name}_streamed", lambda: train_steps(
                        model, stream.train.batches(lists[:k], augment=True, seed=1)))]
            for key, fn in (runs if r % 2 == 0 else runs[::-1]):  # who goes first alternates
                timed(key, fn)
        log(f"round {r + 1}/{args.rounds}: " + ", ".join(f"{k} {v[-1]:.0f}/s" for k, v in timings.items()))
    med = {k: statistics.median(v) for k, v in timings.items()}
    out = {"images": len(stream.train) + len(stream.val) + len(stream.test), "batch": BATCH,
           "steps": args.steps, "threads": torch.get_num_threads(), "num_workers": 2,
           "rates_per_round": timings, "median_images_per_s": med, "models": {}}
    for name in models:
        paired = [s / m for s, m in zip(timings[f"{name}_streamed"], timings[f"{name}_memory"])]
        out["models"][name] = {
            "train_memory": med[f"{name}_memory"], "train_streamed": med[f"{name}_streamed"],
            "load_over_train": med["load_none"] / med[f"{name}_memory"],
            "load_standard_over_train": med["load_standard"] / med[f"{name}_memory"],
            "streamed_over_memory": med[f"{name}_streamed"] / med[f"{name}_memory"],
            "streamed_over_memory_paired": paired,
            "streamed_over_memory_median_paired": statistics.median(paired)}
    return out


def train_steps(model, batches) -> int:
    """Training steps as fit() takes them (Adam, cross-entropy); returns images seen."""
    from compress.core.metrics import loss_fn
    opt = torch.optim.Adam(model.parameters(), lr=1e-3, fused=True)
    model.train()
    seen = 0
    for x, y in batches:
        opt.zero_grad(set_to_none=True)
        loss_fn(model(x), y).backward()
        opt.step()
        seen += len(y)
    return seen


# ------------------------------------------------------------------ 2. peak memory
MEMORY_CHILD = """
import json, resource, sys
from compress.cli import main
sys.argv = ["compress", *json.loads(sys.argv[1])]
code = 0
try:
    main()
except SystemExit as e:
    code = e.code
print("PEAK " + json.dumps({"self_kb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss,
                            "workers_kb": resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss,
                            "code": code}))
"""


def peak_memory(root: Path, work: Path, tag: str) -> dict:
    out = work / f"pre-{tag}"
    argv = ["pretrain", "--no-track", "--out", str(out), "--json",
            *[a for kv in (("data.name", "imagefolder"), ("data.root", str(root)),
                           ("data.num_workers", 2), ("model.name", "conv4"),
                           ("model.width", 0.25), ("model.batchnorm", "true"),
                           ("train.duration", "1ep"), ("train.batch_size", BATCH))
              for a in ("--set", f"{kv[0]}={kv[1]}")]]
    start = time.perf_counter()
    r = subprocess.run([sys.executable, "-c", MEMORY_CHILD, json.dumps(argv)], cwd=work,
                       env=_env(ROOT), capture_output=True, text=True)
    seconds = time.perf_counter() - start
    line = next((ln for ln in r.stdout.splitlines() if ln.startswith("PEAK ")), None)
    if line is None or json.loads(line[5:])["code"] not in (0, None):
        raise RuntimeError(f"memory run failed: {r.stderr[-2000:]}")
    shutil.rmtree(out, ignore_errors=True)
    peak = json.loads(line[5:])
    return {"self_mb": peak["self_kb"] / 1024, "workers_mb": peak["workers_kb"] / 1024,
            "seconds": seconds}


# ------------------------------------------------------------------ 4. fingerprint cost
def fingerprint_seconds(root: Path) -> float:
    from compress.data.filebacked import files_fingerprint
    section = {"name": "imagefolder", "root": str(root)}
    files_fingerprint(section)
    times = []
    for _ in range(5):
        start = time.perf_counter()
        files_fingerprint(section)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


# ------------------------------------------------------------------ 3. before vs after
FIT_CHILD = """
import json, sys, time, torch
from compress.config import resolve
from compress.core.loop import fit
from compress.stages.runner import build, load_data
cfg = resolve(json.loads(sys.argv[1]), seed=0)
data = load_data(cfg)
model = build(cfg, data)
start = time.perf_counter()
fit(model, data, cfg.train, seed=0)
print("FIT " + json.dumps({"seconds": time.perf_counter() - start, "package": __import__("compress").__file__}))
"""


def _env(pythonpath: Path) -> dict:
    return {**os.environ, "PYTHONPATH": str(pythonpath)}


def baseline_package(work: Path) -> Path:
    dest = work / "baseline"
    dest.mkdir(parents=True, exist_ok=True)
    archive = subprocess.run(["git", "-C", str(ROOT), "archive", BASELINE, "compress"],
                             capture_output=True, check=True)
    subprocess.run(["tar", "-x", "-C", str(dest)], input=archive.stdout, check=True)
    return dest


def fit_seconds(layers: dict, pythonpath: Path, cwd: Path) -> float:
    r = subprocess.run([sys.executable, "-c", FIT_CHILD, json.dumps(layers)], cwd=cwd,
                       env=_env(pythonpath), capture_output=True, text=True)
    line = next((ln for ln in r.stdout.splitlines() if ln.startswith("FIT ")), None)
    if line is None:
        raise RuntimeError(f"fit run failed: {r.stderr[-2000:]}")
    found = json.loads(line[4:])
    if not found["package"].startswith(str(pythonpath)):
        raise RuntimeError(f"ran {found['package']}, expected the package under {pythonpath}")
    return found["seconds"]


def process_seconds(layers: dict, pythonpath: Path, cwd: Path) -> float:
    sets = [a for k, v in _flat(layers) for a in ("--set", f"{k}={json.dumps(v)}")]
    out = cwd / f"out-{time.monotonic_ns()}"
    start = time.perf_counter()
    r = subprocess.run([sys.executable, "-m", "compress", "pretrain", "--no-track", "--seed", "0",
                        "--out", str(out), "--json", *sets], cwd=cwd, env=_env(pythonpath),
                       capture_output=True, text=True)
    seconds = time.perf_counter() - start
    if r.returncode != 0:
        raise RuntimeError(f"pretrain failed: {r.stderr[-2000:]}")
    shutil.rmtree(out, ignore_errors=True)
    return seconds


def _flat(layers: dict, prefix: str = ""):
    for k, v in layers.items():
        if isinstance(v, dict):
            yield from _flat(v, f"{prefix}{k}.")
        else:
            yield f"{prefix}{k}", v


def before_after(work: Path, args) -> dict:
    old = baseline_package(work)
    results = {}
    for name, layers in BUILTIN_RUNS.items():
        if args.quick:
            layers = {**layers, "train": {**layers["train"], "duration": "1ep"}}
        rows: dict[str, dict[str, list[float]]] = {"fit": {"now": [], "baseline": []},
                                                    "process": {"now": [], "baseline": []}}
        for p in range(args.pairs):
            order = [("now", ROOT), ("baseline", old)]
            for side, path in (order if p % 2 == 0 else order[::-1]):
                rows["fit"][side].append(fit_seconds(layers, path, work))
                rows["process"][side].append(process_seconds(layers, path, work))
            log(f"{name} pair {p + 1}/{args.pairs}: fit now {rows['fit']['now'][-1]:.2f} s, "
                f"baseline {rows['fit']['baseline'][-1]:.2f} s")
        results[name] = {"config": layers, **{
            kind: {"now_s": r["now"], "baseline_s": r["baseline"],
                   "now_median_s": statistics.median(r["now"]),
                   "baseline_median_s": statistics.median(r["baseline"]),
                   "ratio_median_paired": statistics.median(a / b for a, b in zip(r["now"], r["baseline"]))}
            for kind, r in rows.items()}}
    return {"baseline": BASELINE, "pairs": args.pairs, "runs": results}


# ------------------------------------------------------------------ main
def main(argv=None) -> None:
    args = parse_args(argv)
    work = Path(args.work or tempfile.mkdtemp(prefix="data-stream-"))
    work.mkdir(parents=True, exist_ok=True)
    result = {"provenance": provenance()}
    big, small = work / f"images-{args.images}", work / f"images-{args.small}"
    for folder, n in ((big, args.images), (small, args.small)):
        if not folder.exists():
            log(f"writing {n} PNG files to {folder}")
            write_folder(folder, n)
    result["throughput"] = throughput(big, args)
    write_json(args.out, result)
    mem = {str(n): [] for n in (args.small, args.images)}
    for _ in range(2):  # each size twice, alternating
        for folder, n in ((small, args.small), (big, args.images)):
            mem[str(n)].append(peak_memory(folder, work, str(n)))
            log(f"peak memory {n} images: {mem[str(n)][-1]}")
    peak = {n: max(r["self_mb"] for r in runs) for n, runs in mem.items()}
    result["memory"] = {"runs": mem, "peak_self_mb": peak,
                        "large_over_small": peak[str(args.images)] / peak[str(args.small)]}
    write_json(args.out, result)
    result["fingerprint_seconds"] = {str(n): fingerprint_seconds(folder)
                                     for folder, n in ((small, args.small), (big, args.images))}
    log(f"fingerprint seconds: {result['fingerprint_seconds']}")
    write_json(args.out, result)
    result["before_after"] = before_after(work, args)
    write_json(args.out, result)
    print(summary(result, args))
    if args.work is None:
        shutil.rmtree(work, ignore_errors=True)


def summary(result: dict, args) -> str:
    t = result["throughput"]
    rows = [[name, f"{m['train_memory']:.0f}", f"{m['train_streamed']:.0f}",
             f"{m['streamed_over_memory_median_paired']:.2f}", f"{m['load_over_train']:.2f}"]
            for name, m in t["models"].items()]
    rates = t["median_images_per_s"]
    lines = [f"load rate (images/s, num_workers 2): none {rates['load_none']:.0f}, standard "
             f"augmentation {rates['load_standard']:.0f}; num_workers 0: {rates['load_none_w0']:.0f}, "
             f"1: {rates['load_none_w1']:.0f}",
             markdown_table(["model", "train from memory", "train streamed",
                             "streamed/memory (median paired)", "load/train"], rows)]
    m = result["memory"]
    lines.append(f"peak memory: {m['peak_self_mb']} MB; large/small {m['large_over_small']:.3f}")
    lines.append(f"fingerprint seconds: {result['fingerprint_seconds']}")
    rows = [[name, f"{r['fit']['baseline_median_s']:.2f}", f"{r['fit']['now_median_s']:.2f}",
             f"{r['fit']['ratio_median_paired']:.3f}", f"{r['process']['ratio_median_paired']:.3f}"]
            for name, r in result["before_after"]["runs"].items()]
    lines.append(markdown_table(["run", f"fit s at {BASELINE}", "fit s now", "fit now/before",
                                 "process now/before"], rows))
    return "\n\n".join(lines)


if __name__ == "__main__":
    main()
