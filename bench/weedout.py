"""Weedout (random search over node masks at init) vs a random node mask, MNIST-5k.

Per seed (data seed = run seed), in-process through the package's stages (NullTracker):
  dense   pretrain: the model trained dense from its init, SGD lr 0.05 momentum 0.9 batch 60,
          --iters iterations (Weedout's embedded default training)
  weedout prune from that stage at node sparsity s in --sparsities: population --population,
          --generations generations (patience 0: all of them), random_search, layer-wise node
          masks, control on. The method starts from the dense stage's INIT (init.pt), trains
          the winner and the control (a random first-population mask) with the same train
          config, the same init and the same data order (seed), and scores the winner, the
          control and the whole first population on the held-out quarter of val that
          selection never saw.
Reported per sparsity: held-out initial fitness (-loss) of winner / control / first-population
mean (and population std), test accuracy after training of winner / control and the paired
difference, dense accuracy, search seconds vs training seconds.

  OMP_NUM_THREADS=1 .venv/bin/python bench/weedout.py --seeds 3
  OMP_NUM_THREADS=1 .venv/bin/python bench/weedout.py --quick
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import torch  # noqa: E402

from common import (RESULTS_DIR, cfg_of, fmt_ms, log, make_env, markdown_table,  # noqa: E402
                    mean_std, provenance, stage, write_json)


def parse_args(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--model", default="mlp512", choices=["mlp512", "lenet300"],
                    help="mlp512 = mlp hidden [512, 512] (the paper-like MLP), or lenet300")
    ap.add_argument("--sparsities", default="0.2,0.4,0.6,0.8", help="node fractions REMOVED")
    ap.add_argument("--population", type=int, default=100)
    ap.add_argument("--generations", type=int, default=5)
    ap.add_argument("--iters", type=int, default=1000, help="training iterations (dense, winner, control)")
    ap.add_argument("--budget-min", type=float, default=20.0)
    ap.add_argument("--quick", action="store_true", help="1 seed, sparsity 0.5, population 10, 100it")
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args(argv)
    if args.quick:
        args.seeds, args.sparsities, args.population, args.generations, args.iters = 1, "0.5", 10, 2, 100
        args.out = args.out or RESULTS_DIR / "weedout_quick.json"
    args.out = args.out or RESULTS_DIR / "weedout.json"
    args.sparsities = [float(s) for s in args.sparsities.split(",") if s.strip()]
    return args


def base_config(seed: int, args) -> dict:
    model = {"name": "mlp", "hidden": [512, 512]} if args.model == "mlp512" else {"name": "lenet300"}
    return {"data": {"name": "mnist5k", "n_train": 3500, "n_val": 500, "n_test": 1000, "seed": seed},
            "model": model,
            "train": {"optimizer": "sgd", "lr": 0.05, "momentum": 0.9, "batch_size": 60,
                      "weight_decay": 0.0, "duration": f"{args.iters}it"}}


def method(s: float, args) -> dict:
    return {"name": "weedout", "sparsity": s, "population": args.population,
            "generations": args.generations, "selection": "random_search", "patience": 0,
            "control": True}


def run_seed(seed: int, args, env) -> dict:
    base = base_config(seed, args)
    dense = stage(env, "pretrain", cfg_of(base, seed=seed))
    log(f"seed {seed}: dense {dense['metrics']['test_accuracy'] * 100:.2f} ({dense['seconds']:.1f} s)")
    out = {"seed": seed, "dense": {"test_accuracy": dense["metrics"]["test_accuracy"],
                                   "seconds": dense["seconds"]}, "sparsity": {}}
    for s in args.sparsities:
        rec = stage(env, "prune", cfg_of(base, {"method": method(s, args)}, seed=seed), dense)
        info = rec["method_info"]
        w, c, h = info["winner"], info["control"], info["heldout"]
        gens = info["generations"]
        r = {"winner_heldout_fitness": w["heldout_fitness"], "control_heldout_fitness": c["heldout_fitness"],
             "population_heldout_mean": h.get("population_mean"),
             "population_heldout_std": h.get("population_std"), "heldout_samples": h.get("samples"),
             "winner_selection_fitness": w["fitness"], "control_selection_fitness": c["fitness"],
             "gen1_selection_mean": gens[0]["mean_fitness"], "gen1_selection_std": gens[0]["std_fitness"],
             "winner_born": w["born"], "generations_run": info["generations_run"],
             "control_is_winner": c["is_winner"],
             "winner_test_accuracy": w["test_accuracy"], "control_test_accuracy": c["test_accuracy"],
             "winner_minus_control_points": (w["test_accuracy"] - c["test_accuracy"]) * 100,
             "winner_kept": w["kept"], "control_kept": c["kept"],
             "winner_weight_density": w["weight_density"],
             "search_seconds": info["search_seconds"], "train_seconds": info["train_seconds"],
             "control_seconds": info["control_seconds"], "stage_seconds": rec["seconds"]}
        out["sparsity"][str(s)] = r
        log(f"seed {seed} sparsity {s}: held-out fitness winner {r['winner_heldout_fitness']:.4f} "
            f"control {r['control_heldout_fitness']:.4f} pop {r['population_heldout_mean']:.4f}"
            f"±{r['population_heldout_std']:.4f}; test winner {r['winner_test_accuracy'] * 100:.2f} "
            f"control {r['control_test_accuracy'] * 100:.2f}; search {r['search_seconds']:.1f} s, "
            f"train {r['train_seconds']:.1f} s")
    return out


def aggregate(seeds: list[dict], args) -> dict:
    rows = []
    for s in args.sparsities:
        per = [x["sparsity"][str(s)] for x in seeds if str(s) in x["sparsity"]]
        if not per:
            continue
        row = {"sparsity": s, "n": len(per)}
        for k in ("winner_heldout_fitness", "control_heldout_fitness", "population_heldout_mean",
                  "population_heldout_std", "winner_test_accuracy", "control_test_accuracy",
                  "winner_minus_control_points", "search_seconds", "train_seconds", "control_seconds"):
            vals = [p[k] for p in per]
            m, sd = mean_std(vals)
            row[k] = {"mean": m, "std": sd, "values": vals}
        wc = [p["winner_heldout_fitness"] - p["control_heldout_fitness"] for p in per]
        wp = [(p["winner_heldout_fitness"] - p["population_heldout_mean"]) / p["population_heldout_std"]
              for p in per]
        row["winner_minus_control_heldout_fitness"] = {"values": wc, "mean": mean_std(wc)[0]}
        row["winner_vs_population_z"] = {"values": wp, "mean": mean_std(wp)[0]}
        row["winner_beats_control_heldout"] = f"{sum(v > 0 for v in wc)}/{len(wc)}"
        row["winner_beats_population_mean_heldout"] = f"{sum(v > 0 for v in wp)}/{len(wp)}"
        rows.append(row)
    dense = [x["dense"]["test_accuracy"] for x in seeds]
    m, sd = mean_std(dense)
    allpaired = [v for r in rows for v in r["winner_minus_control_points"]["values"]]
    return {"dense": {"mean": m, "std": sd, "values": dense}, "rows": rows,
            "verdicts": {
                "search_better_initial_fitness_than_control":
                    f"{sum(v > 0 for r in rows for v in r['winner_minus_control_heldout_fitness']['values'])}"
                    f"/{sum(len(r['winner_minus_control_heldout_fitness']['values']) for r in rows)} paired",
                "search_better_than_population_mean":
                    f"{sum(v > 0 for r in rows for v in r['winner_vs_population_z']['values'])}"
                    f"/{sum(len(r['winner_vs_population_z']['values']) for r in rows)}",
                "post_training_winner_minus_control_points_all": mean_std(allpaired),
                "post_training_wins": f"{sum(v > 0 for v in allpaired)}/{len(allpaired)} "
                                      f"(ties {sum(v == 0 for v in allpaired)})"}}


def tables(agg: dict, args) -> str:
    header = ["node sparsity", "held-out fitness winner", "control", "1st pop mean ± std",
              "winner z vs pop", "test acc winner", "control", "winner − control (pts, per seed)",
              "search s", "train s (winner)"]
    rows = []
    for r in agg["rows"]:
        f = lambda k, sc=1.0, d=3: fmt_ms(r[k]["values"], scale=sc, digits=d)  # noqa: E731
        rows.append([f"{r['sparsity']:g}", f("winner_heldout_fitness"), f("control_heldout_fitness"),
                     f"{r['population_heldout_mean']['mean']:.3f} ± {r['population_heldout_std']['mean']:.3f}",
                     f"{r['winner_vs_population_z']['mean']:+.2f}",
                     f("winner_test_accuracy", 100, 2), f("control_test_accuracy", 100, 2),
                     f"{r['winner_minus_control_points']['mean']:+.2f} (" + ", ".join(
                         f"{v:+.1f}" for v in r["winner_minus_control_points"]["values"]) + ")",
                     f("search_seconds", 1, 2), f("train_seconds", 1, 1)])
    model = "MLP 784-512-512-10" if args.model == "mlp512" else "LeNet-300-100"
    head = (f"{model}, MNIST-5k, m={args.population}, G={args.generations}, random_search, "
            f"{args.iters} it SGD; dense test acc {fmt_ms(agg['dense']['values'])}%; fitness = -loss "
            "on the held-out 125 val samples")
    return head + "\n" + markdown_table(header, rows)


def main(argv=None) -> int:
    args = parse_args(argv)
    torch.set_num_threads(1)
    meta = provenance()
    work = Path(tempfile.mkdtemp(prefix="weedout-bench-"))
    env = make_env(work)
    t0 = time.perf_counter()
    seeds, skipped, payload = [], [], {}

    def save(status):
        agg = aggregate(seeds, args) if seeds else None
        payload.update({"benchmark": "weedout", "status": status, **meta,
                        "options": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
                        "protocol": {"base": base_config("<seed>", args), "method": method("<s>", args),
                                     "init": "the model's own init (PyTorch default for mlp / Glorot "
                                             "for lenet300), not He normal as in the paper",
                                     "pairing": "winner, control and dense: same init, same data order"},
                        "wall_seconds_total": round(time.perf_counter() - t0, 1),
                        "loadavg_end": list(os.getloadavg()), "skipped_seeds": skipped,
                        "summary": agg, "seeds": seeds})
        write_json(args.out, payload)

    try:
        for seed in range(args.seeds):
            if seeds and (time.perf_counter() - t0) / 60 > args.budget_min:
                skipped.append(seed)
                continue
            seeds.append(run_seed(seed, args, env))
            save("running")
        save("done")
    finally:
        shutil.rmtree(work, ignore_errors=True)
    print()
    print(tables(payload["summary"], args))
    print(payload["summary"]["verdicts"])
    print(f"\nresults: {args.out} (total {payload['wall_seconds_total']:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
