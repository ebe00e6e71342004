"""`compress report`: a sweep's cells as mean ± 95% CI per method and density, table and plot.

Rows come from the MLflow runs of a sweep (tag `compress.sweep`, one run per cell with the
cell in `compress.cell.*` tags and its metrics) or from a sweep folder's results.json.
Seeds (and anything else not a grouping key) are the replicates of a group.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

from compress.errors import UserError

GROUP_EXCLUDE = ("seed",)


def rows_from_folder(root: Path) -> tuple[str, list[dict]]:
    from compress.sweep import RESULTS_FILE
    path = Path(root) / RESULTS_FILE
    if not path.is_file():
        raise UserError(f"{root} has no {RESULTS_FILE}; pass a sweep's output folder "
                        "(`compress sweep ... --out DIR`) or --sweep NAME for its MLflow runs")
    data = json.loads(path.read_text())
    return data["sweep"], [{"cell": r["cell"], "metrics": r["metrics"]} for r in data["rows"]]


def rows_from_mlflow(tracker, sweep: str) -> tuple[str | None, list[dict]]:
    """(the sweep's parent run id, one row per cell run)."""
    client = tracker._client
    exp = tracker.experiment_id
    runs = client.search_runs([exp], f"tags.`compress.sweep` = '{sweep}'", max_results=50000)
    parent = [r for r in runs if r.data.tags.get("compress.kind") == "sweep"]
    latest: dict[str, dict] = {}
    for r in sorted((r for r in runs if r.data.tags.get("compress.kind") == "cell"),
                    key=lambda r: r.info.start_time):
        cell = {k.removeprefix("compress.cell."): json.loads(v) for k, v in r.data.tags.items()
                if k.startswith("compress.cell.")}
        if r.data.metrics:  # a cell that finished; a re-run of the same cell replaces it
            latest[json.dumps(cell, sort_keys=True)] = {"cell": cell, "metrics": dict(r.data.metrics)}
    if not latest:
        raise UserError(f"no finished cells of sweep {sweep!r} in {tracker.describe()} "
                        f"(experiment {tracker.experiment_id}); run `compress sweep FILE` first")
    parent_id = max(parent, key=lambda r: r.info.start_time).info.run_id if parent else None
    return parent_id, list(latest.values())


def t_quantile(df: int) -> float:
    from scipy import stats
    return float(stats.t.ppf(0.975, df))


def aggregate(rows: list[dict], metric: str) -> list[dict]:
    """Group rows by every cell key except the replicate keys; mean and 95% CI (Student t)."""
    missing = [r for r in rows if metric not in r["metrics"]]
    if missing:
        have = sorted({k for r in rows for k in r["metrics"]})
        raise UserError(f"metric {metric!r} is not in every cell; cells have: {', '.join(have)}")
    groups: dict[str, dict] = {}
    for r in rows:
        key = {k: v for k, v in r["cell"].items() if k not in GROUP_EXCLUDE}
        g = groups.setdefault(json.dumps(key, sort_keys=True), {"group": key, "values": []})
        g["values"].append(float(r["metrics"][metric]))
    out = []
    for g in groups.values():
        v, n = g["values"], len(g["values"])
        mean = sum(v) / n
        sd = math.sqrt(sum((x - mean) ** 2 for x in v) / (n - 1)) if n > 1 else float("nan")
        half = t_quantile(n - 1) * sd / math.sqrt(n) if n > 1 else float("nan")
        out.append({**g["group"], "n": n, "mean": mean, "std": sd, "ci95": half, "values": v})
    return sorted(out, key=lambda r: (str(r.get("method")), -float(r.get("density", 1)),
                                      json.dumps(r, sort_keys=True, default=str)))


def markdown(table: list[dict], metric: str, title: str) -> str:
    keys = [k for k in table[0] if k not in ("n", "mean", "std", "ci95", "values")]
    lines = [f"# {title}", "", f"{metric}: mean ± 95% CI (Student t over n replicates)", "",
             "| " + " | ".join([*keys, "n", metric]) + " |", "|" + "---|" * (len(keys) + 2)]
    for r in table:
        ci = "" if math.isnan(r["ci95"]) else f" ± {r['ci95']:.4f}"
        lines.append("| " + " | ".join([*(str(r[k]) for k in keys), str(r["n"]),
                                         f"{r['mean']:.4f}{ci}"]) + " |")
    return "\n".join(lines) + "\n"


def plot(table: list[dict], metric: str, path: Path, title: str) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    if not all("density" in r for r in table):
        raise UserError("the plot needs `density` in the sweep grid")
    series: dict[str, list[dict]] = {}
    for r in table:
        label = ", ".join(f"{k}={v}" if k != "method" else str(v) for k, v in r.items()
                          if k not in ("density", "n", "mean", "std", "ci95", "values"))
        series.setdefault(label, []).append(r)
    fig, ax = plt.subplots(figsize=(6, 4))
    for label, pts in series.items():
        pts = sorted(pts, key=lambda r: r["density"])
        x = [p["density"] for p in pts]
        y = [p["mean"] for p in pts]
        ci = [0.0 if math.isnan(p["ci95"]) else p["ci95"] for p in pts]
        line, = ax.plot(x, y, marker="o", label=label)
        ax.fill_between(x, [a - b for a, b in zip(y, ci)], [a + b for a, b in zip(y, ci)],
                        color=line.get_color(), alpha=0.2, linewidth=0)
    ax.set_xscale("log")
    ax.invert_xaxis()
    ax.set_xlabel("density (fraction of weights kept)")
    ax.set_ylabel(metric)
    ax.set_title(title, fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def default_metric(rows: list[dict]) -> str:
    have = set.intersection(*(set(r["metrics"]) for r in rows))
    for key in ("test_auc", "test_accuracy"):  # AUC is the headline of binary tasks
        if key in have:
            return key
    raise UserError(f"pass --metric; the cells have: {', '.join(sorted(have))}")


def write_report(name: str, rows: list[dict], metric: str | None, out: Path) -> dict:
    metric = metric or default_metric(rows)
    table = aggregate(rows, metric)
    out.mkdir(parents=True, exist_ok=True)
    title = f"sweep {name}: {metric} vs density"
    (out / "report.md").write_text(markdown(table, metric, title))
    (out / "report.json").write_text(json.dumps({"sweep": name, "metric": metric, "rows": table},
                                                indent=2))
    files = {"markdown": str(out / "report.md"), "json": str(out / "report.json")}
    if all("density" in r for r in table):
        plot(table, metric, out / "report.png", title)
        files["plot"] = str(out / "report.png")
    return {"sweep": name, "metric": metric, "rows": table, "files": files}
