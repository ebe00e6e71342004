"""Costs of pruning at train time and gains at inference time, for the CPNA MLP (60 -> 1024 -> 1).

1. Training: time of a masked training step / a dense one (batch 256, Adam, 3D-XOR data).
   a. per step, mirroring compress/core/loop.py's order exactly (zero_grad, forward, loss,
      backward, MaskEnforcer.mask_grads, optimizer.step, MaskEnforcer.mask_weights);
   b. end to end, compress.core.loop.fit for one epoch (12 steps + the per-epoch val evaluation)
      with and without masks=MaskEnforcer(masks).
   Masks: the real CPNA(all) masks of a 3D-XOR run, and random masks at density 0.01 and 0.5.
   Variants run round-robin (start rotated each round) in one process; medians per variant,
   plus the median of the per-round paired ratios. Goal: masked / dense <= 1.10.
2. Inference: onnxruntime latency of the dense pretrained model (exported as is) vs the CPNA
   winner structurally shrunk (compress.core.structure.shrink_mlp), at batch 1 and 256, with
   compress.export.onnx.ort_session (2 intra-op threads, spinning off); round-robin, medians;
   the multiply-add ratio next to the measured speedup.
3. Tracking (--tracking, runs only this section): the demo command `compress prune --method cpna
   --json` with MLflow tracking (local sqlite store) and with --no-track, each in a fresh
   subprocess, alternately (A B, then B A: paired runs). Each mode has its own working folder;
   its first run (which trains the stages and, tracked, creates the store) is reported apart;
   the pairs after it re-run the command on the finished folders (every stage reused, what the
   issue timed). Reported: median per-pair ratio tracked/untracked of CPU time (user+sys of the
   child, what a loaded machine cannot distort much) and of wall time; plus where the tracked
   run's extra CPU seconds go (one subprocess timing its imports and store calls in turn).
   Goal: tracked / untracked <= 1.2.

  .venv/bin/python bench/overhead.py                       # runs its own 3D pretrain + CPNA
  .venv/bin/python bench/overhead.py --cpna-dir DIR        # reuse a CPNA(all) prune-stage folder
  .venv/bin/python bench/overhead.py --quick               # < 1 min smoke test
  OMP_NUM_THREADS=2 .venv/bin/python bench/overhead.py --tracking [--pairs 8] [--demo-full]
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import numpy as np  # noqa: E402
import torch  # noqa: E402

from common import (RESULTS_DIR, cfg_of, log, make_env, markdown_table, provenance,  # noqa: E402
                    stage, write_json)

DEFAULT_THREADS = torch.get_num_threads()
BASE = {
    "data": {"name": "xor", "k": 3, "p": 60, "n_train": 3000, "n_val": 1000, "n_test": 3000,
             "seed": 0},
    "model": {"name": "mlp", "hidden": [1024]},
    "train": {"optimizer": "adam", "lr": 3e-3, "weight_decay": 1e-3, "batch_size": 256,
              "duration": "150ep"},
}
METHOD = {"name": "cpna", "output_connections": 12, "input_connections": 24, "mu": 10,
          "anneal_epochs": 100, "final_epochs": 10}


def parse_args(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seeds", type=int, default=1,
                    help="seeds of random masks / step data (the CPNA run uses seed 0); "
                         "rounds are split across seeds")
    ap.add_argument("--quick", action="store_true", help="tiny smoke version (< 1 min)")
    ap.add_argument("--out", type=Path, default=None, help="JSON path (default bench/results/overhead.json)")
    ap.add_argument("--cpna-dir", type=Path, default=None,
                    help="a finished CPNA(all) prune-stage folder of the 3D-XOR net to reuse "
                         "(its source pretrain folder must still exist)")
    ap.add_argument("--step-rounds", type=int, default=150, help="round-robin rounds, step timing")
    ap.add_argument("--steps-per-round", type=int, default=10)
    ap.add_argument("--fit-rounds", type=int, default=30, help="round-robin rounds, fit() timing")
    ap.add_argument("--phase-rounds", type=int, default=150,
                    help="round-robin rounds of the per-phase step breakdown")
    ap.add_argument("--ort-rounds", type=int, default=40, help="round-robin rounds, ORT (>= 20)")
    ap.add_argument("--extra-threads", default="1",
                    help="also time the step at these torch thread counts (comma list, '' for none)")
    ap.add_argument("--tracking", action="store_true",
                    help="only section 3: tracked vs --no-track demo runs, paired")
    ap.add_argument("--pairs", type=int, default=8, help="tracked/untracked pairs (--tracking)")
    ap.add_argument("--demo-full", action="store_true",
                    help="--tracking: the demo's own training length for the first runs (minutes); "
                         "default shortens it (the timed re-runs reuse the stages either way)")
    args = ap.parse_args(argv)
    if args.tracking:
        args.out = args.out or RESULTS_DIR / "overhead_tracking.json"
    if args.quick:
        args.step_rounds, args.steps_per_round, args.fit_rounds, args.ort_rounds = 6, 3, 2, 20
        args.phase_rounds = 20
        args.out = args.out or RESULTS_DIR / "overhead_quick.json"
    args.out = args.out or RESULTS_DIR / "overhead.json"
    args.extra_threads = [int(t) for t in args.extra_threads.split(",") if t.strip()]
    return args


# ------------------------------------------------------------------ the CPNA winner
def cpna_winner(args, work: Path) -> tuple[dict, dict]:
    """(pretrain record, CPNA(all) prune record): reused from --cpna-dir or run here."""
    from compress.stages.artifacts import read_stage
    if args.cpna_dir:
        pruned = read_stage(args.cpna_dir)
        dense = read_stage(Path(pruned.record["source"]["dir"]))
        log(f"reusing CPNA stage {args.cpna_dir} (test AUC {pruned.record['metrics']['test_auc']:.4f})")
        return dense.record, pruned.record
    base = copy.deepcopy(BASE)
    method = dict(METHOD)
    if args.quick:
        base["train"]["duration"] = "4ep"
        method.update(anneal_epochs=2, final_epochs=1)
    env = make_env(work)
    # Setup only (not timed): one thread runs far faster on this shared 2-core machine.
    torch.set_num_threads(1)
    try:
        dense = stage(env, "pretrain", cfg_of(base, seed=0))
        log(f"pretrained dense 60-1024-1: test AUC {dense['metrics']['test_auc']:.4f} "
            f"({dense['seconds']:.0f} s)")
        pruned = stage(env, "prune", cfg_of(base, {"method": method}, seed=0), dense)
        log(f"CPNA(all): test AUC {pruned['metrics']['test_auc']:.4f}, "
            f"density {pruned['density']:.5f} ({pruned['seconds']:.0f} s)")
    finally:
        torch.set_num_threads(DEFAULT_THREADS)
    return dense, pruned


def load_models(dense_rec: dict, pruned_rec: dict):
    from compress.config import Config
    from compress.core.masking import apply_masks
    from compress.stages.artifacts import StageInfo
    from compress.stages.runner import build, load_data
    cfg = Config(**pruned_rec["config"])
    data = load_data(cfg)
    dense = build(cfg, data)
    dense.load_state_dict(StageInfo(Path(dense_rec["out_dir"]), dense_rec).state("weights"))
    info = StageInfo(Path(pruned_rec["out_dir"]), pruned_rec)
    sparse = build(cfg, data)
    sparse.load_state_dict(info.state("weights"))
    masks = info.masks()
    apply_masks(sparse, masks)
    return cfg, data, dense.eval(), sparse.eval(), masks


def random_masks(model, density: float, seed: int):
    from compress.core.masking import keep_top, prunable_parameters
    from compress.core.masks import MaskSet
    g = torch.Generator().manual_seed(seed)
    out = {}
    for name, p in prunable_parameters(model).items():
        scores = torch.rand(p.shape, generator=g)
        out[name] = keep_top(scores, max(1, round(density * p.numel())))
    return MaskSet(out)


# ------------------------------------------------------------------ 1a. per-step timing
class StepVariant:
    """A model + Adam + optional MaskEnforcer, stepping exactly as loop._run_epoch does."""

    def __init__(self, name, model, masks, train_cfg, data, seed):
        from compress.core.loop import make_optimizer
        from compress.core.masking import MaskEnforcer
        self.name = name
        self.model = copy.deepcopy(model).train()
        self.enforcer = MaskEnforcer(masks) if masks is not None else None
        if self.enforcer is not None:
            self.enforcer.bind(self.model)
        self.opt = make_optimizer(list(self.model.parameters()), train_cfg)
        self.x, self.y, self.bs = data.train.x, data.train.y, train_cfg.batch_size
        self.gen = torch.Generator().manual_seed(seed)
        self.order, self.pos = torch.randperm(len(self.y), generator=self.gen), 0

    def _batch(self):
        if self.pos >= len(self.y):
            self.order, self.pos = torch.randperm(len(self.y), generator=self.gen), 0
        idx = self.order[self.pos:self.pos + self.bs]
        self.pos += self.bs
        return idx

    def steps(self, n: int) -> float:
        """Seconds per step over n steps (batch indexing included, as in the loop)."""
        from compress.core.metrics import loss_fn
        x, y, model, opt, enf = self.x, self.y, self.model, self.opt, self.enforcer
        t0 = time.perf_counter()
        for _ in range(n):
            idx = self._batch()
            opt.zero_grad(set_to_none=True)
            loss = loss_fn(model(x[idx]), y[idx])
            loss.backward()
            if enf is not None:
                enf.mask_grads()
            opt.step()
            if enf is not None:
                enf.mask_weights()
            loss.detach()
        return (time.perf_counter() - t0) / n


    def phases(self) -> dict[str, float]:
        """One step, split into the loop's phases (seconds each); for the breakdown only."""
        from compress.core.metrics import loss_fn
        x, y, model, opt, enf = self.x, self.y, self.model, self.opt, self.enforcer
        idx = self._batch()
        t0 = time.perf_counter()
        opt.zero_grad(set_to_none=True)
        loss = loss_fn(model(x[idx]), y[idx])
        loss.backward()
        t1 = time.perf_counter()
        if enf is not None:
            enf.mask_grads()
        t2 = time.perf_counter()
        opt.step()
        t3 = time.perf_counter()
        if enf is not None:
            enf.mask_weights()
        t4 = time.perf_counter()
        return {"forward_backward": t1 - t0, "mask_grads": t2 - t1, "optimizer_step": t3 - t2,
                "mask_weights": t4 - t3}


def phase_breakdown(args, model, mask_sets, train_cfg, data, seed: int) -> dict:
    """Median seconds of each step phase per variant (round-robin, one step per variant a round)."""
    variants = {n: StepVariant(n, model, m, train_cfg, data, seed) for n, m in mask_sets.items()}
    for v in variants.values():
        v.steps(5)
    rows = {n: [] for n in variants}
    names = list(variants)
    for r in range(max(10, args.phase_rounds // args.seeds)):
        k = r % len(names)
        for n in names[k:] + names[:k]:
            rows[n].append(variants[n].phases())
    return {n: {ph: statistics.median(row[ph] for row in rs[len(rs) // 10:]) for ph in rs[0]}
            for n, rs in rows.items()}


def sqrt_zero_check(reps: int = 300) -> dict:
    """Seconds of Tensor.sqrt() on 61,440 zeros vs positive values (Adam's denominator).

    Adam takes sqrt(exp_avg_sq) of every entry, and a pruned weight's exp_avg_sq is exactly 0.
    """
    out = {}
    for name, x in (("positive", torch.rand(61440) + 1e-3), ("zeros", torch.zeros(61440))):
        ts = []
        for _ in range(reps):
            t0 = time.perf_counter()
            x.sqrt()
            ts.append(time.perf_counter() - t0)
        out[name] = statistics.median(ts[reps // 10:])
    return out


def round_robin(variants: dict, rounds: int, run_one) -> dict[str, list[float]]:
    """run_one(variant) -> seconds; each round runs every variant once, start rotated."""
    names = list(variants)
    times = {n: [] for n in names}
    for r in range(rounds):
        k = r % len(names)
        for n in names[k:] + names[:k]:
            times[n].append(run_one(variants[n]))
    return times


def summarise(times: dict[str, list[float]], ref: str = "dense") -> dict:
    out = {}
    for n, ts in times.items():
        paired = [a / b for a, b in zip(ts, times[ref])]
        out[n] = {
            "median_s": statistics.median(ts),
            "p25_s": float(np.percentile(ts, 25)), "p75_s": float(np.percentile(ts, 75)),
            "ratio_of_medians": statistics.median(ts) / statistics.median(times[ref]),
            "median_paired_ratio": statistics.median(paired),
            "samples_s": ts,
        }
    return out


def step_timing(args, model, mask_sets, train_cfg, data, threads: int, seed: int) -> dict:
    torch.set_num_threads(threads)
    variants = {n: StepVariant(n, model, m, train_cfg, data, seed) for n, m in mask_sets.items()}
    for v in variants.values():  # warm-up (allocator, Adam state)
        v.steps(5)
    rounds = max(1, args.step_rounds // args.seeds)
    times = round_robin(variants, rounds, lambda v: v.steps(args.steps_per_round))
    torch.set_num_threads(DEFAULT_THREADS)
    return summarise(times)


def mask_op_timing(model, masks, reps: int) -> dict:
    """Seconds of MaskEnforcer.mask_grads() + mask_weights() alone (the per-step extra work)."""
    from compress.core.masking import MaskEnforcer
    m = copy.deepcopy(model)
    for p in m.parameters():
        p.grad = torch.randn_like(p)
    enf = MaskEnforcer(masks)
    enf.bind(m)
    ts = []
    for _ in range(reps):
        t0 = time.perf_counter()
        enf.mask_grads()
        enf.mask_weights()
        ts.append(time.perf_counter() - t0)
    return {"median_s": statistics.median(ts[reps // 10:]), "reps": reps}


# ------------------------------------------------------------------ 1b. fit() timing
def fit_timing(args, model, mask_sets, train_cfg, data, seed: int) -> dict:
    from compress.core.loop import fit
    from compress.core.masking import MaskEnforcer
    cfg = train_cfg.model_copy(update={"duration": "1ep"})
    models = {n: copy.deepcopy(model).train() for n in mask_sets}

    def one(name):
        m = mask_sets[name]
        t0 = time.perf_counter()
        fit(models[name], data, cfg, seed=seed, masks=MaskEnforcer(m) if m is not None else None)
        return time.perf_counter() - t0

    for n in mask_sets:
        one(n)  # warm-up
    rounds = max(1, args.fit_rounds // args.seeds)
    return summarise(round_robin({n: n for n in mask_sets}, rounds, one))


# ------------------------------------------------------------------ 2. onnxruntime
def ort_timing(args, dense, sparse, masks, data, work: Path) -> dict:
    from compress.core.structure import count_macs, shrink_mlp, structure_report
    from compress.export.onnx import check_parity, export_onnx, ort_session
    shrunk, spec = shrink_mlp(sparse, masks)
    example = data.test.x[:2]
    paths = {"dense": export_onnx(dense, example, work / "dense.onnx"),
             "shrunk": export_onnx(shrunk, example, work / "shrunk.onnx")}
    parity = {"dense": check_parity(paths["dense"], dense, data.test.x[:256]),
              "shrunk": check_parity(paths["shrunk"], sparse, data.test.x[:256])}
    one = data.test.x[:1]
    macs = {"dense": count_macs(dense, one), "shrunk": count_macs(shrunk, one),
            "spec_dense": spec["macs"]["dense"], "spec_shrunk": spec["macs"]["shrunk"]}
    sessions = {n: ort_session(p, threads=2) for n, p in paths.items()}
    in_name = {n: s.get_inputs()[0].name for n, s in sessions.items()}
    out = {"parity_rel_error": parity, "macs_per_sample": macs,
           "onnx_bytes": {n: p.stat().st_size for n, p in paths.items()},
           "structure": structure_report(sparse, masks), "widths": spec["widths"],
           "input_kept": spec["input_kept"], "batches": {}}
    for batch, calls in ((1, 400), (256, 100)):
        if args.quick:
            calls //= 10
        x = data.test.x[:batch].numpy().astype(np.float32)

        def run(name, x=x, calls=calls):
            s, feed = sessions[name], {in_name[name]: x}
            t0 = time.perf_counter()
            for _ in range(calls):
                s.run(None, feed)
            return (time.perf_counter() - t0) / calls

        for n in sessions:
            for _ in range(20):
                sessions[n].run(None, {in_name[n]: x})
        times = round_robin({n: n for n in sessions}, args.ort_rounds, run)
        res = summarise(times)
        out["batches"][str(batch)] = {
            "calls_per_round": calls, "rounds": args.ort_rounds,
            "dense_median_us": res["dense"]["median_s"] * 1e6,
            "shrunk_median_us": res["shrunk"]["median_s"] * 1e6,
            "speedup": res["dense"]["median_s"] / res["shrunk"]["median_s"],
            "median_paired_speedup": 1 / res["shrunk"]["median_paired_ratio"],
            "mac_ratio": macs["dense"] / macs["shrunk"],
            "detail": res,
        }
        log(f"ORT batch {batch}: dense {res['dense']['median_s'] * 1e6:.1f} us, shrunk "
            f"{res['shrunk']['median_s'] * 1e6:.1f} us, speedup "
            f"{res['dense']['median_s'] / res['shrunk']['median_s']:.2f}x "
            f"(MACs {macs['dense']} / {macs['shrunk']} = {macs['dense'] / macs['shrunk']:.0f}x)")
    return out


# ------------------------------------------------------------------ tracking (section 3)
DEMO = ["prune", "--method", "cpna", "--json"]
SHORT_DEMO = ["--set", "train.duration=2ep", "--set", "method.anneal_epochs=2",
              "--set", "method.final_epochs=1"]
REPO = Path(__file__).resolve().parent.parent

# Run in a subprocess: CPU seconds of each step a tracked command adds, in the order it does them.
BREAKDOWN = """
import json, resource, sys
def cpu():
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime
marks = [("start", cpu())]
import torch, compress.cli
marks.append(("import torch + compress (untracked too)", cpu()))
from compress.tracking.mlflow_tracker import _import_mlflow
_import_mlflow()
marks.append(("import mlflow", cpu()))
import mlflow.store.tracking.sqlalchemy_store
marks.append(("import mlflow's sqlite store", cpu()))
from compress.tracking import make_tracker
tracker = make_tracker(True, experiment="overhead-breakdown")
marks.append(("open the store, get/create experiment", cpu()))
with tracker.run("breakdown"):
    tracker.log_params({"a": {"b": 1, "c": 2}})
    tracker.log_metrics({"m": 1.0})
    tracker.set_tags({"k": "v"})
marks.append(("one run: params, metrics, tags, end", cpu()))
print(json.dumps({b[0]: round(b[1] - a[1], 3) for a, b in zip(marks, marks[1:])}))
"""


def _child_cpu() -> float:
    import resource
    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime


def _timed(cmd: list[str], cwd: Path) -> dict:
    """CPU (user+sys of the child) and wall seconds of one command in a fresh subprocess."""
    import subprocess
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(
        [str(REPO), *filter(None, [os.environ.get("PYTHONPATH")])]))
    cpu0, wall0 = _child_cpu(), time.perf_counter()
    done = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True)
    wall, cpu = time.perf_counter() - wall0, _child_cpu() - cpu0
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} exited {done.returncode}: {done.stderr[-2000:]}")
    return {"cpu_s": round(cpu, 3), "wall_s": round(wall, 3), "stdout": done.stdout}


def tracking_pairs(args, work: Path) -> dict:
    base = [sys.executable, "-m", "compress", *DEMO, *([] if args.demo_full else SHORT_DEMO)]
    modes = {"tracked": base + ["--track"], "untracked": base + ["--no-track"]}
    dirs = {m: work / m for m in modes}
    first = {}
    for mode, cmd in modes.items():
        dirs[mode].mkdir(parents=True)
        log(f"first {mode} run (trains the stages{', creates the store' if mode == 'tracked' else ''})")
        first[mode] = {k: v for k, v in _timed(cmd, dirs[mode]).items() if k != "stdout"}
    runs = {m: [] for m in modes}
    for i in range(args.pairs):
        order = list(modes) if i % 2 == 0 else list(modes)[::-1]
        for mode in order:
            out = _timed(modes[mode], dirs[mode])
            runs[mode].append({k: v for k, v in out.items() if k != "stdout"})
        log(f"pair {i + 1}/{args.pairs}: tracked {runs['tracked'][-1]['cpu_s']:.2f} s CPU, "
            f"untracked {runs['untracked'][-1]['cpu_s']:.2f} s CPU")
    summary = {}
    for key in ("cpu_s", "wall_s"):
        ratios = [t[key] / u[key] for t, u in zip(runs["tracked"], runs["untracked"])]
        summary[key] = {
            "tracked_median": round(statistics.median(r[key] for r in runs["tracked"]), 3),
            "untracked_median": round(statistics.median(r[key] for r in runs["untracked"]), 3),
            "median_paired_ratio": round(statistics.median(ratios), 3),
            "paired_ratios": [round(r, 3) for r in ratios]}
    summary["first_run"] = first
    summary["runs"] = runs
    summary["command"] = " ".join(["compress", *modes["tracked"][3:]])
    return summary


def tracking_breakdown(work: Path, fresh: bool) -> dict:
    """CPU seconds per step of tracking, against an existing store or a fresh one."""
    folder = work / ("breakdown-fresh" if fresh else "tracked")
    folder.mkdir(exist_ok=True)
    out = _timed([sys.executable, "-c", BREAKDOWN], folder)
    return json.loads(out["stdout"].strip().splitlines()[-1])


def tracking_main(args) -> int:
    meta = provenance()
    t_start = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="overhead-tracking-") as tmp:
        work = Path(tmp)
        pairs = tracking_pairs(args, work)
        breakdown = {"existing_store": tracking_breakdown(work, fresh=False),
                     "fresh_store": tracking_breakdown(work, fresh=True)}
    cpu, wall = pairs["cpu_s"], pairs["wall_s"]
    payload = {"benchmark": "overhead_tracking", **meta,
               "options": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
               "pairs": pairs, "breakdown_cpu_s": breakdown,
               "goal_tracked_over_untracked_le_1.2": cpu["median_paired_ratio"] <= 1.2,
               "wall_seconds_total": round(time.perf_counter() - t_start, 1),
               "loadavg_end": list(os.getloadavg())}
    write_json(args.out, payload)
    print()
    print(markdown_table(
        ["", "tracked (median)", "--no-track (median)", "median paired ratio"],
        [[f"{k} s", f"{v['tracked_median']:.2f}", f"{v['untracked_median']:.2f}",
          f"{v['median_paired_ratio']:.2f}x"] for k, v in (("CPU", cpu), ("wall", wall))]))
    print()
    print(markdown_table(["tracked run: step", "CPU s (existing store)", "CPU s (fresh store)"],
                         [[k, f"{v:.2f}", f"{breakdown['fresh_store'][k]:.2f}"]
                          for k, v in breakdown["existing_store"].items()]))
    print(f"\nresults: {args.out}  (total {payload['wall_seconds_total']:.0f} s)")
    return 0


# ------------------------------------------------------------------ main
def main(argv=None) -> int:
    args = parse_args(argv)
    if args.tracking:
        return tracking_main(args)
    meta = provenance()
    t_start = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="overhead-") as tmp:
        work = Path(tmp)
        dense_rec, pruned_rec = cpna_winner(args, work / "stages")
        cfg, data, dense, sparse, cpna_masks = load_models(dense_rec, pruned_rec)
        log(f"CPNA masks: density {cpna_masks.density():.5f} kept {cpna_masks.kept()}; torch "
            f"threads default {DEFAULT_THREADS}")

        steps, fits, mask_ops, breakdown = {}, {}, {}, {}
        for seed in range(args.seeds):
            mask_sets = {"dense": None, "cpna": cpna_masks,
                         "random_0.01": random_masks(dense, 0.01, seed),
                         "random_0.5": random_masks(dense, 0.5, seed)}
            for threads in [DEFAULT_THREADS, *[t for t in args.extra_threads if t != DEFAULT_THREADS]]:
                key = f"seed{seed}_threads{threads}"
                log(f"step timing {key}: {args.step_rounds // args.seeds} rounds x "
                    f"{args.steps_per_round} steps x {len(mask_sets)} variants")
                steps[key] = step_timing(args, dense, mask_sets, cfg.train, data, threads, seed)
                log("  " + ", ".join(f"{n} {v['median_s'] * 1e3:.2f} ms ({v['ratio_of_medians']:.3f}x, "
                                     f"paired {v['median_paired_ratio']:.3f}x)"
                                     for n, v in steps[key].items()))
            mask_ops[f"seed{seed}"] = {
                n: mask_op_timing(dense, m, 50 if args.quick else 500)
                for n, m in mask_sets.items() if m is not None}
            log("  mask_grads + mask_weights alone: " + ", ".join(
                f"{n} {v['median_s'] * 1e6:.1f} us" for n, v in mask_ops[f"seed{seed}"].items()))
            breakdown[f"seed{seed}_threads{DEFAULT_THREADS}"] = bd = phase_breakdown(
                args, dense, mask_sets, cfg.train, data, seed)
            log("  step phases (us): " + "; ".join(
                f"{n}: " + " ".join(f"{ph} {t * 1e6:.0f}" for ph, t in v.items()) for n, v in bd.items()))
            key = f"seed{seed}_threads{DEFAULT_THREADS}"
            log(f"fit() timing {key}: {args.fit_rounds // args.seeds} rounds of 1 epoch x "
                f"{len(mask_sets)} variants")
            fits[key] = fit_timing(args, dense, mask_sets, cfg.train, data, seed)
            log("  " + ", ".join(f"{n} {v['median_s'] * 1e3:.1f} ms ({v['ratio_of_medians']:.3f}x)"
                                 for n, v in fits[key].items()))
        log(f"onnxruntime timing: {args.ort_rounds} rounds")
        ort = ort_timing(args, dense, sparse, cpna_masks, data, work / "onnx")
        cpna_info = {"dense_test_auc": dense_rec["metrics"]["test_auc"],
                     "cpna_test_auc": pruned_rec["metrics"]["test_auc"],
                     "density": pruned_rec["density"], "kept": cpna_masks.kept(),
                     "structure": pruned_rec.get("structure"),
                     "source": str(args.cpna_dir) if args.cpna_dir else "run here (3D-XOR seed 0)"}

    goal = {}
    for key, res in steps.items():
        for n, v in res.items():
            if n != "dense":
                goal[f"step_{key}_{n}"] = v["ratio_of_medians"]
    for key, res in fits.items():
        for n, v in res.items():
            if n != "dense":
                goal[f"fit_{key}_{n}"] = v["ratio_of_medians"]
    payload = {"benchmark": "overhead", **meta, "options": {k: (str(v) if isinstance(v, Path) else v)
                                                           for k, v in vars(args).items()},
               "cpna_run": cpna_info, "step": steps, "mask_ops": mask_ops, "step_phases": breakdown,
               "sqrt_zero_vs_positive_s": sqrt_zero_check(), "fit": fits, "onnxruntime": ort,
               "goal_masked_over_dense_le_1.10": {k: v <= 1.10 for k, v in goal.items()},
               "ratios": goal, "wall_seconds_total": round(time.perf_counter() - t_start, 1),
               "loadavg_end": list(os.getloadavg())}
    write_json(args.out, payload)

    rows = []
    for kind, table in (("step (loop.py order)", steps), ("fit() 1 epoch", fits)):
        for key, res in table.items():
            unit = 1e3
            rows.append([kind, key.replace("_", " "),
                         *[f"{res[n]['median_s'] * unit:.2f} ({res[n]['ratio_of_medians']:.3f}x)"
                           for n in ("dense", "cpna", "random_0.01", "random_0.5")]])
    print()
    print(markdown_table(["timing", "seed / threads", "dense ms", "CPNA masks ms (ratio)",
                          "random d=0.01 ms (ratio)", "random d=0.5 ms (ratio)"], rows))
    print()
    brows = []
    for key, bd in breakdown.items():
        for n, v in bd.items():
            brows.append([key.replace("_", " "), n, *[f"{v[ph] * 1e6:.0f}" for ph in
                                                      ("forward_backward", "mask_grads", "optimizer_step", "mask_weights")]])
    print(markdown_table(["seed / threads", "variant", "fwd+bwd µs", "mask_grads µs", "Adam step µs",
                          "mask_weights µs"], brows))
    sq = payload["sqrt_zero_vs_positive_s"]
    print(f"\nsqrt of 61,440 floats: positive {sq['positive'] * 1e6:.0f} µs, zeros {sq['zeros'] * 1e6:.0f} µs")
    print()
    orows = []
    for b, r in ort["batches"].items():
        orows.append([b, f"{r['dense_median_us']:.1f}", f"{r['shrunk_median_us']:.1f}",
                      f"{r['speedup']:.2f}x", f"{r['median_paired_speedup']:.2f}x",
                      f"{r['mac_ratio']:.0f}x ({ort['macs_per_sample']['dense']} / "
                      f"{ort['macs_per_sample']['shrunk']})"])
    print(markdown_table(["batch", "dense ORT µs", "shrunk ORT µs", "speedup (medians)",
                          "speedup (paired)", "MAC ratio (dense / shrunk per sample)"], orows))
    print(f"\nwidths dense {ort['widths']['dense']} -> shrunk {ort['widths']['shrunk']}; "
          f"parity rel. error {ort['parity_rel_error']}")
    print(f"results: {args.out}  (total {payload['wall_seconds_total']:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
