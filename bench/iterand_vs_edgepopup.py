"""IteRand vs edge-popup vs plain SGD on a small conv net (conv2 / conv4) over MNIST-5k.

Per seed (data seed = run seed) and width factor, in-process through the package's stages
(NullTracker, no MLflow):
  sgd        pretrain: the dense net trained normally (its own Glorot init), SGD lr --sgd-lr,
             momentum 0.9, weight decay 5e-4, batch 128, cosine, --epochs epochs
  edgepopup  prune from that stage (only data/model are shared: the method draws its own frozen
             random weights), weight_init signed_constant (SC) and kaiming_uniform (KU),
             density --density, SGD lr --score-lr momentum 0.9 wd 5e-4 batch 128 cosine,
             --epochs epochs
  iterand    the same plus re-randomisation: k_per = --k-per steps (>= 10 events), r = --r
Every redraw event is timed by wrapping compress.methods.edgepopup.redraw in this process
(the hook looks the function up by module global at call time); the total is reported as a
fraction of IteRand's training (the prune stage's wall seconds).
Then the per-step time of score training vs plain SGD: one batch forward/backward/step on the
dense net (all parameters) vs on the scored net (scores only, top-k masks), round-robin in one
process, medians, at each width.

  OMP_NUM_THREADS=1 .venv/bin/python bench/iterand_vs_edgepopup.py --seeds 3 --epochs 8
  OMP_NUM_THREADS=1 .venv/bin/python bench/iterand_vs_edgepopup.py --quick

The JSON is rewritten after every finished (seed, width), so a partial run leaves valid results.
"""

from __future__ import annotations

import argparse
import copy
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import torch  # noqa: E402

from common import (RESULTS_DIR, cfg_of, fmt_ms, log, make_env, markdown_table,  # noqa: E402
                    mean_std, provenance, stage, write_json)

INITS = [("signed_constant", "SC"), ("kaiming_uniform", "KU")]
REDRAW_TIMES: list[float] = []


def install_redraw_timer() -> None:
    import compress.methods.edgepopup.method as ep
    if getattr(ep.redraw, "_bench_timed", False):
        return
    orig = ep.redraw

    def timed(*a, **k):
        t0 = time.perf_counter()
        try:
            return orig(*a, **k)
        finally:
            REDRAW_TIMES.append(time.perf_counter() - t0)

    timed._bench_timed = True  # type: ignore[attr-defined]
    ep.redraw = timed


def parse_args(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--model", default="conv2", choices=["conv2", "conv4"])
    ap.add_argument("--widths", default="0.0625,0.125,0.25,0.5")
    ap.add_argument("--epochs", type=int, default=5)
    ap.add_argument("--density", type=float, default=0.5, help="fraction of weights KEPT")
    ap.add_argument("--k-per", type=int, default=None,
                    help="steps between randomisations (default: total steps // 15)")
    ap.add_argument("--r", type=float, default=0.1)
    ap.add_argument("--sgd-lr", type=float, default=0.05)
    ap.add_argument("--score-lr", type=float, default=0.1)
    ap.add_argument("--timing-rounds", type=int, default=20)
    ap.add_argument("--timing-steps", type=int, default=3)
    ap.add_argument("--budget-min", type=float, default=30.0,
                    help="no new (seed, width) starts after this many minutes")
    ap.add_argument("--quick", action="store_true", help="smoke run: 1 seed, widths 0.25, 1 epoch")
    ap.add_argument("--timing-only", action="store_true",
                    help="only the score-vs-SGD step timing (no training runs)")
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args(argv)
    if args.quick:
        args.seeds, args.widths, args.epochs = 1, "0.25", 2
        args.timing_rounds, args.timing_steps = 4, 2
        args.out = args.out or RESULTS_DIR / "iterand_vs_edgepopup_quick.json"
    args.out = args.out or RESULTS_DIR / "iterand_vs_edgepopup.json"
    args.widths = [float(w) for w in args.widths.split(",") if w.strip()]
    steps = args.epochs * -(-3500 // 128)
    args.total_steps = steps
    if args.k_per is None:
        args.k_per = max(1, steps // 15)
    return args


def base_config(seed: int, width: float, args) -> dict:
    return {"data": {"name": "mnist5k", "n_train": 3500, "n_val": 500, "n_test": 1000, "seed": seed},
            "model": {"name": args.model, "width": width}}


def sgd_train(args) -> dict:
    return {"optimizer": "sgd", "lr": args.sgd_lr, "momentum": 0.9, "weight_decay": 5e-4,
            "batch_size": 128, "duration": f"{args.epochs}ep", "schedule": "cosine"}


def score_train(args) -> dict:
    return {"optimizer": "sgd", "lr": args.score_lr, "momentum": 0.9, "weight_decay": 5e-4,
            "batch_size": 128, "duration": f"{args.epochs}ep", "schedule": "cosine"}


def run_cell(seed: int, width: float, args, env) -> dict:
    base = base_config(seed, width, args)
    dense = stage(env, "pretrain", cfg_of(base, {"train": sgd_train(args)}, seed=seed))
    out = {"seed": seed, "width": width,
           "sgd": {"test_accuracy": dense["metrics"]["test_accuracy"],
                   "train_accuracy": dense["metrics"].get("train_accuracy"),
                   "seconds": dense["seconds"]}}
    log(f"seed {seed} width {width}: SGD {dense['metrics']['test_accuracy'] * 100:.2f} "
        f"({dense['seconds']:.1f} s)")
    for init, tag in INITS:
        for method in ("edgepopup", "iterand"):
            m = {"name": method, "density": args.density, "weight_init": init}
            if method == "iterand":
                m.update({"k_per": args.k_per, "r": args.r})
            n0 = len(REDRAW_TIMES)
            rec = stage(env, "prune", cfg_of(base, {"train": score_train(args), "method": m},
                                             seed=seed), dense)
            redraw_s = REDRAW_TIMES[n0:]
            events = (rec.get("method_info") or {}).get("seeds", {}).get("events", [])
            res = {"test_accuracy": rec["metrics"]["test_accuracy"],
                   "train_accuracy": rec["metrics"].get("train_accuracy"),
                   "density": rec["density"], "seconds": rec["seconds"]}
            if method == "iterand":
                res.update({"events": len(events), "redraw_seconds": redraw_s,
                            "redraw_total_s": sum(redraw_s),
                            "redraw_fraction": sum(redraw_s) / rec["seconds"]})
            out[f"{method}_{tag}"] = res
            log(f"seed {seed} width {width}: {method} {tag} {res['test_accuracy'] * 100:.2f} "
                f"({rec['seconds']:.1f} s" + (f", {len(events)} events, redraw "
                                             f"{sum(redraw_s) * 1e3:.1f} ms = "
                                             f"{res['redraw_fraction'] * 100:.3f}%"
                                             if method == "iterand" else "") + ")")
    return out


# ------------------------------------------------------------------ step timing
class Stepper:
    def __init__(self, model, params, data, lr, seed):
        self.model = model.train()
        self.opt = torch.optim.SGD(params, lr=lr, momentum=0.9, weight_decay=5e-4, fused=True)
        self.x, self.y = data.train.x, data.train.y
        self.gen = torch.Generator().manual_seed(seed)

    def steps(self, n: int) -> float:
        from compress.core.metrics import loss_fn
        t0 = time.perf_counter()
        for _ in range(n):
            idx = torch.randint(len(self.y), (128,), generator=self.gen)
            self.opt.zero_grad(set_to_none=True)
            loss = loss_fn(self.model(self.x[idx]), self.y[idx])
            loss.backward()
            self.opt.step()
        return (time.perf_counter() - t0) / n


def step_timing(width: float, args) -> dict:
    from compress.methods.edgepopup import scores as sm
    from compress.core.masking import prunable_parameters
    from compress.stages.runner import build, load_data
    cfg = cfg_of(base_config(0, width, args), {"train": sgd_train(args)}, seed=0)
    data = load_data(cfg)
    dense = build(cfg, data)
    scored_model = copy.deepcopy(dense)
    names = list(prunable_parameters(scored_model))
    with torch.no_grad():
        for n, w in sm.draw_weights(scored_model, names, "signed_constant", 0).items():
            dict(scored_model.named_parameters())[n].copy_(w)
    sm.freeze_extras(scored_model)
    scored = sm.attach(scored_model, {n: args.density for n in names}, 1)
    variants = {"sgd": Stepper(dense, list(dense.parameters()), data, args.sgd_lr, 0),
                "scores": Stepper(scored_model, [pm.scores for pm in scored.values()], data,
                                  args.score_lr, 0)}
    for v in variants.values():
        v.steps(3)
    times = {n: [] for n in variants}
    names_v = list(variants)
    for r in range(args.timing_rounds):
        k = r % 2
        for n in names_v[k:] + names_v[:k]:
            times[n].append(variants[n].steps(args.timing_steps))
    med = {n: statistics.median(t) for n, t in times.items()}
    paired = [a / b for a, b in zip(times["scores"], times["sgd"])]
    return {"width": width, "median_s": med, "ratio_of_medians": med["scores"] / med["sgd"],
            "median_paired_ratio": statistics.median(paired),
            "rounds": args.timing_rounds, "steps_per_call": args.timing_steps, "samples_s": times}


# ------------------------------------------------------------------ summary
def aggregate(cells: list[dict], args) -> dict:
    rows = []
    for w in args.widths:
        per = [c for c in cells if c["width"] == w]
        if not per:
            continue
        row = {"width": w, "n_seeds": len(per)}
        for key in ["sgd"] + [f"{m}_{t}" for _, t in INITS for m in ("edgepopup", "iterand")]:
            vals = [c[key]["test_accuracy"] for c in per]
            m, s = mean_std(vals)
            row[key] = {"mean": m, "std": s, "values": vals}
        for _, t in INITS:
            d = [(c[f"iterand_{t}"]["test_accuracy"] - c[f"edgepopup_{t}"]["test_accuracy"]) * 100
                 for c in per]
            m, s = mean_std(d)
            row[f"gap_{t}_points"] = {"mean": m, "std": s, "values": d}
        fr = [c[f"iterand_{t}"]["redraw_fraction"] for c in per for _, t in INITS]
        row["redraw_fraction"] = {"mean": statistics.fmean(fr), "max": max(fr)}
        row["events"] = sorted({c[f"iterand_{t}"]["events"] for c in per for _, t in INITS})
        rows.append(row)
    return {"rows": rows}


def verdicts(agg: dict, timing: list[dict]) -> dict:
    rows = agg["rows"]
    out = {}
    gaps = {t: [r[f"gap_{t}_points"]["mean"] for r in rows] for _, t in INITS}
    out["iterand_ge_edgepopup_every_cell"] = all(g >= 0 for gs in gaps.values() for g in gs)
    out["iterand_minus_edgepopup_mean_points"] = {t: dict(zip([r["width"] for r in rows], g))
                                                  for t, g in gaps.items()}
    if rows:
        smallest = min(rows, key=lambda r: r["width"])
        out["gap_largest_at_smallest_width"] = {
            t: smallest[f"gap_{t}_points"]["mean"] == max(gaps[t]) for _, t in INITS}
    fr = [r["redraw_fraction"]["max"] for r in rows]
    out["redraw_fraction_max"] = max(fr) if fr else None
    out["redraw_le_1pct"] = bool(fr) and max(fr) <= 0.01
    out["score_step_ratio"] = {str(t["width"]): t["ratio_of_medians"] for t in timing}
    return out


def tables(agg: dict, timing: list[dict], args) -> str:
    header = ["width", "SGD (dense)"] + [f"{lab} {t}" for _, t in INITS
                                         for lab in ("edge-popup", "IteRand")] + \
             [f"IteRand − EP {t} (pts, per seed)" for _, t in INITS] + ["redraw % of IteRand"]
    rows = []
    for r in agg["rows"]:
        cells = [fmt_ms(r["sgd"]["values"])]
        cells += [fmt_ms(r[f"{m}_{t}"]["values"]) for _, t in INITS for m in ("edgepopup", "iterand")]
        for _, t in INITS:
            g = r[f"gap_{t}_points"]
            cells.append(f"{g['mean']:+.2f} (" + ", ".join(f"{v:+.1f}" for v in g["values"]) + ")")
        cells.append(f"{r['redraw_fraction']['mean'] * 100:.3f} (max {r['redraw_fraction']['max'] * 100:.3f})")
        rows.append([f"{r['width']:g}"] + cells)
    out = [f"{args.model}, MNIST-5k, {args.epochs} epochs, density {args.density}, k_per "
           f"{args.k_per} (events {agg['rows'][0]['events'] if agg['rows'] else '?'}), r {args.r}; "
           "test accuracy % mean ± std over seeds", markdown_table(header, rows)]
    if timing:
        out.append("")
        out.append(markdown_table(
            ["width", "SGD ms/step", "score ms/step", "ratio of medians", "median paired ratio"],
            [[f"{t['width']:g}", f"{t['median_s']['sgd'] * 1e3:.2f}",
              f"{t['median_s']['scores'] * 1e3:.2f}", f"{t['ratio_of_medians']:.3f}",
              f"{t['median_paired_ratio']:.3f}"] for t in timing]))
    return "\n".join(out)


def figure(agg: dict, path: Path, args) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    rows = agg["rows"]
    if not rows:
        return
    x = [r["width"] for r in rows]
    fig, axes = plt.subplots(1, 2, figsize=(10, 4), sharey=True)
    for ax, (_, t) in zip(axes, INITS):
        for key, label, c in (("sgd", "SGD (dense)", "k"), (f"edgepopup_{t}", "edge-popup", "C0"),
                              (f"iterand_{t}", "IteRand", "C3")):
            m = [r[key]["mean"] * 100 for r in rows]
            s = [0 if r[key]["std"] != r[key]["std"] else r[key]["std"] * 100 for r in rows]
            ax.errorbar(x, m, yerr=s, fmt="-o", color=c, capsize=3, label=label)
        ax.set_xscale("log", base=2)
        ax.set_xlabel("width factor")
        ax.set_title(f"{args.model} MNIST-5k, weights {t}")
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("test accuracy (%)")
    axes[0].legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv=None) -> int:
    args = parse_args(argv)
    torch.set_num_threads(1)
    install_redraw_timer()
    meta = provenance()
    work = Path(tempfile.mkdtemp(prefix="iterand-bench-"))
    env = make_env(work)
    t0 = time.perf_counter()
    cells, skipped, timing = [], [], []
    payload: dict = {}

    def save(status):
        agg = aggregate(cells, args)
        payload.update({
            "benchmark": "iterand_vs_edgepopup", "status": status, **meta,
            "options": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
            "protocol": {
                "data": "mnist5k, split 3500/500/1000, data seed = run seed",
                "model": f"{args.model} (width factor scales channels and FC units; no BN)",
                "sgd": sgd_train(args), "score_training": score_train(args),
                "edgepopup": {"density": args.density, "weight_init": [i for i, _ in INITS]},
                "iterand": {"k_per": args.k_per, "r": args.r},
                "accuracy": "test accuracy at the end of training",
                "redraw_timing": "compress.methods.edgepopup.redraw wrapped with perf_counter; "
                                 "fraction = sum of redraw seconds / the prune stage's seconds",
            },
            "wall_seconds_total": round(time.perf_counter() - t0, 1),
            "loadavg_end": list(os.getloadavg()),
            "skipped": skipped, "summary": agg, "verdicts": verdicts(agg, timing),
            "step_timing": timing, "cells": cells})
        write_json(args.out, payload)
        figure(agg, args.out.with_suffix(".png"), args)

    try:
        # order: widths ascending, all seeds of a width before the next (the claim is about
        # small widths; a run cut by --budget-min loses seeds of the widest, slowest nets)
        for w in ([] if args.timing_only else sorted(args.widths)):
            for seed in range(args.seeds):
                el = (time.perf_counter() - t0) / 60
                if cells and el > args.budget_min:
                    log(f"budget spent ({el:.1f} min): skip seed {seed} width {w}")
                    skipped.append({"seed": seed, "width": w})
                    continue
                cells.append(run_cell(seed, w, args, env))
                save("running")
        for w in args.widths:
            timing.append(step_timing(w, args))
            log(f"step timing width {w}: ratio {timing[-1]['ratio_of_medians']:.3f}")
        save("done")
    finally:
        shutil.rmtree(work, ignore_errors=True)
    print()
    print(tables(payload["summary"], timing, args))
    print(f"\nresults: {args.out} (total {payload['wall_seconds_total']:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
