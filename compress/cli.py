"""The `compress` command line. Thin: parse, resolve config, call a stage, print the result.

Heavy modules (torch, mlflow, onnx) are imported inside the commands so `--help` is instant.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated, Optional

import typer

import contextlib

from compress.errors import Diverged, GateFailed, Interrupted, TrackingLost, UserError

# Plain click help: rich-formatted help costs ~150 ms of imports on every `--help`.
app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  rich_markup_mode=None,
                  help="Find sparse sub-networks, track them in MLflow, ship them as ONNX.")
pipeline_app = typer.Typer(no_args_is_help=True, rich_markup_mode=None, help="Run staged pipelines from YAML.")
app.add_typer(pipeline_app, name="pipeline")
registry_app = typer.Typer(no_args_is_help=True, rich_markup_mode=None,
                           help="The MLflow model registry: list, show, promote, compare.")
app.add_typer(registry_app, name="registry")

ConfigOpt = Annotated[Optional[Path], typer.Option("--config", "-c", help="YAML config file.")]
SetOpt = Annotated[Optional[list[str]], typer.Option(
    "--set", "-s", help="Override a config key: --set train.lr=0.001 (repeatable).")]
SeedOpt = Annotated[Optional[int], typer.Option(help="Seed for init, data order and masks.")]
OutOpt = Annotated[Optional[Path], typer.Option(
    "--out", "-o", help="Output folder (a stage's folder; for multi-stage commands, their root).")]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print one JSON object on stdout.")]
FromOpt = Annotated[Optional[str], typer.Option(
    "--from", help="Source: a stage folder or an MLflow run id (prune also takes a registered "
                   "model, models:/NAME@ALIAS or models:/NAME/VERSION).")]
TrackOpt = Annotated[bool, typer.Option("--track/--no-track", help="Log to MLflow.")]
FreshOpt = Annotated[bool, typer.Option(
    "--fresh", help="Re-run every stage instead of reusing finished, identical ones.")]
PluginOpt = Annotated[Optional[list[str]], typer.Option(
    "--plugin", metavar="MODULE", help="A module (or .py file) that registers methods, models or datasets "
                     "(repeatable; recorded with the stages).")]
GateOpt = Annotated[Optional[list[str]], typer.Option(
    "--gate", help="Quality gate on the JSON summary, e.g. 'metrics.test_accuracy>=0.97' "
    "(repeatable); a failed gate exits 3.")]


class Invocation:
    """The options every command shares, turned into config layers and a stage environment."""

    def __init__(self, config: Path | None, sets: list[str] | None, seed: int | None,
                 out: Path | None, as_json: bool, track: bool, extra: dict | None = None,
                 plugins: list[str] | None = None):
        from compress.config import load_yaml, parse_set
        # Plugins first (they register the names the rest may use); flags like --method next:
        # --config and --set then refine that method's section (a later change of method
        # name would reset the section and drop them).
        self.layers = ([{"plugins": list(plugins)}] if plugins else []) + \
            ([extra] if extra else []) + ([load_yaml(config)] if config else []) + \
            [parse_set(s) for s in sets or []]
        self.seed, self.out, self.as_json, self.track = seed, out, as_json, track

    def env(self, base: list[dict] | None = None):
        """The stage environment, after every check that needs no stage (compress.preflight):
        a mistake found there leaves no store, folder or run behind."""
        from compress import preflight
        from compress.config import tracking_settings
        from compress.stages.runner import StageEnv
        from compress.tracking import make_tracker
        preflight.check([*(base or []), *self.layers], track=self.track, out=self.out)
        # Only the tracking section: the rest may need the source stage's config (e.g.
        # --set data.num_workers=0 for a source on an image folder), validated with it later.
        tracking = tracking_settings(*(base or []), *self.layers)
        tracker = make_tracker(self.track and tracking.enabled, tracking.experiment)
        return StageEnv(tracker=tracker)  # status lines on stderr, --json or not

    def local_source(self, ref: str):
        """A stage folder read before any tracker exists; None for an MLflow run id (checked
        for its form and its store, then fetched by `source`)."""
        from compress import preflight
        from compress.stages.artifacts import read_stage
        if ref.startswith("models:/"):
            raise UserError(f"{ref} is a registered model, not a stage: compress it with "
                            f"`compress prune --from {ref} --method NAME` (or evaluate it with "
                            f"`compress import --set model.name={ref}`)")
        path = Path(ref)
        if path.exists():
            return read_stage(path)
        if "/" in ref or ref.startswith("."):
            raise UserError(f"{ref} does not exist; pass a stage folder or an MLflow run id")
        preflight.check_run_id(ref, self.track)
        return None

    def source(self, ref: str, env):
        """A stage folder, or an MLflow run id resolved to one."""
        from compress.stages.artifacts import read_stage
        found = self.local_source(ref)
        return found if found is not None else \
            read_stage(env.tracker.fetch_run(ref, Path(".compress-cache") / ref))

    def config(self, src=None):
        from compress.config import resolve
        base = [src.record["config"]] if src is not None else []
        return resolve(*base, *self.layers, seed=self.seed)


@contextlib.contextmanager
def _interruptible(message: str = "interrupted: the unfinished stage's outputs were discarded; "
                                  "finished stages are kept"):
    """Ctrl-C inside a stage becomes a clean exit 130 (click would print 'Aborted!', exit 1)."""
    try:
        yield
    except KeyboardInterrupt:
        raise Interrupted(message) from None


def _single(stage: str, inv: Invocation, src_ref: str | None) -> None:
    from compress.stages.pipeline import run_one
    src = inv.local_source(src_ref) if src_ref else None
    env = inv.env(base=[src.record["config"]] if src is not None else None)
    if src_ref and src is None:
        src = inv.source(src_ref, env)
    with _interruptible():
        record = run_one(stage, inv.config(src), env, src, inv.out)
    _emit(record, inv.as_json)


@app.command()
def pretrain(config: ConfigOpt = None, set_: SetOpt = None, seed: SeedOpt = None,
             out: OutOpt = None, as_json: JsonOpt = False, track: TrackOpt = True,
             plugin: PluginOpt = None) -> None:
    """Train the dense network (saves its init weights for rewinding); with model.weights,
    fine-tune those weights."""
    _single("pretrain", Invocation(config, set_, seed, out, as_json, track, plugins=plugin), None)


@app.command("import")
def import_cmd(config: ConfigOpt = None, set_: SetOpt = None, seed: SeedOpt = None,
               out: OutOpt = None, as_json: JsonOpt = False, track: TrackOpt = True,
             plugin: PluginOpt = None) -> None:
    """Evaluate a trained model (model.weights, or model.name=models:/NAME@ALIAS) on the data:
    the dense baseline that prune and retrain start from. Nothing is trained."""
    _single("import", Invocation(config, set_, seed, out, as_json, track, plugins=plugin), None)


@app.command()
def prune(method: Annotated[str, typer.Option("--method", "-m", help="A registered method "
                                              "(`compress methods`).")] = "cpna",
          source: FromOpt = None, config: ConfigOpt = None, set_: SetOpt = None,
          seed: SeedOpt = None, out: OutOpt = None, as_json: JsonOpt = False,
          track: TrackOpt = True,
          export: Annotated[bool, typer.Option("--export/--no-export",
                                               help="Export the pruned model to ONNX.")] = True,
          register: Annotated[Optional[str], typer.Option(
              help="Register the exported ONNX model under this name.")] = None,
          gate: GateOpt = None, fresh: FreshOpt = False, plugin: PluginOpt = None) -> None:
    """Prune with a method, then export the winner to ONNX. Without --from, the first stage is
    import (a trained model: model.weights, or --from models:/NAME@ALIAS) or pretrain."""
    from compress.gates import parse_gates
    from compress.registry import METHODS
    gates = parse_gates(gate)
    _load_plugins(plugin)
    METHODS.get(method)  # unknown names fail here, listing the valid ones
    extra = {"method": {"name": method}, **({"export": {"registry_name": register}} if register else {})}
    if source and source.startswith("models:/"):  # a registered model: imported, then pruned
        from compress.tracking.model_source import is_module, pin
        pinned = pin(source)
        # A pickled module is the architecture; a traced graph (pt2) only brings its weights.
        extra["model"] = {"name": pinned} if is_module(pinned) else {"weights": pinned}
        source = None
    inv = Invocation(config, set_, seed, out, as_json, track, extra=extra, plugins=plugin)
    from compress.models.base import arrives_trained
    first = "import" if arrives_trained(inv.config().model) else "pretrain"
    stages = [{"id": "prune", "stage": "prune", "from": "source" if source else first}]
    if not source:
        stages.insert(0, {"id": first, "stage": first})
    if export:
        stages.append({"id": "export", "stage": "export", "from": "prune"})
    _run_spec({"name": f"prune-{method}", "stages": stages,
               "sources": {"source": source} if source else {}}, inv, main="prune", gates=gates,
              fresh=fresh)


def _run_spec(spec: dict, inv: Invocation, main: str | None, gates=(), fresh: bool = False) -> None:
    from compress.stages.pipeline import PipelineSpec, run_pipeline
    env = inv.env(base=[spec.get("config", {})])
    with _interruptible():
        result = run_pipeline(PipelineSpec(**spec), env, inv.layers, inv.seed, inv.out,
                              resolve_source=lambda ref: inv.source(ref, env), fresh=fresh)
    _emit_chain(result, inv.as_json, main=main, gates=gates)


@app.command()
def retrain(source: FromOpt = None,
            mode: Annotated[Optional[str], typer.Option(
                help="finetune (keep weights) | rewind (original init) | reinit (fresh init)")] = None,
            config: ConfigOpt = None, set_: SetOpt = None, seed: SeedOpt = None,
            out: OutOpt = None, as_json: JsonOpt = False, track: TrackOpt = True,
             plugin: PluginOpt = None) -> None:
    """Retrain a pruned network with its mask: fine-tune, rewind to init, or re-initialise."""
    _require(source, "retrain")
    extra = {"retrain": {"mode": mode}} if mode else None
    _single("retrain", Invocation(config, set_, seed, out, as_json, track, extra, plugin), source)


@app.command("export")
def export_cmd(source: FromOpt = None,
               register: Annotated[Optional[str], typer.Option(
                   help="Register the ONNX model under this name in the MLflow registry.")] = None,
               alias: Annotated[Optional[str], typer.Option(help="Registry alias to set.")] = None,
               config: ConfigOpt = None, set_: SetOpt = None, seed: SeedOpt = None,
               out: OutOpt = None, as_json: JsonOpt = False, track: TrackOpt = True,
             plugin: PluginOpt = None) -> None:
    """Export a stage's model to structurally shrunk ONNX (parity-checked), optionally register it."""
    _require(source, "export")
    extra = {"export": {k: v for k, v in (("registry_name", register), ("alias", alias)) if v}}
    _single("export", Invocation(config, set_, seed, out, as_json, track, extra, plugin), source)


@pipeline_app.command("run")
def pipeline_run(file: Annotated[Path, typer.Argument(help="Pipeline YAML.")],
                 config: ConfigOpt = None, set_: SetOpt = None, seed: SeedOpt = None,
                 out: OutOpt = None, as_json: JsonOpt = False, track: TrackOpt = True,
                 gate: GateOpt = None, fresh: FreshOpt = False,
             plugin: PluginOpt = None) -> None:
    """Run every stage of a pipeline file under one parent MLflow run.

    Re-running the same command reuses stages that finished with the same config and inputs
    (files checked against their sha256) and resumes the same parent run.
    """
    from compress.gates import parse_gates
    from compress.stages.pipeline import load_pipeline
    gates = parse_gates(gate)
    spec = load_pipeline(file)
    inv = Invocation(config, set_, seed, out, as_json, track, plugins=plugin)
    _run_spec(spec.model_dump(by_alias=True), inv, main=None, gates=gates, fresh=fresh)


@pipeline_app.command("status")
def pipeline_status(file: Annotated[Path, typer.Argument(help="Pipeline YAML.")],
                    config: ConfigOpt = None, set_: SetOpt = None, seed: SeedOpt = None,
                    out: OutOpt = None, as_json: JsonOpt = False) -> None:
    """Each stage of a pipeline: done / stale / damaged / missing, with its run id (nothing
    runs)."""
    from compress.stages.pipeline import load_pipeline, status_rows
    from compress.stages.runner import DEFAULT_ROOT
    spec = load_pipeline(file)
    inv = Invocation(config, set_, seed, out, as_json, track=False)
    root = out or DEFAULT_ROOT / spec.name
    env = inv.env(base=[spec.config])
    rows = status_rows(spec, inv.layers, inv.seed, root, lambda ref: inv.source(ref, env))
    if as_json:
        print(_json({"pipeline": spec.name, "root": str(root), "stages": rows}))
        return
    width = max(len(r["id"]) for r in rows)
    for r in rows:
        print(f"{r['id']:<{width}}  {r['stage']:<8}  {r['status']:<7}  {r['run_id'] or '-':<32}  "
              f"{r['dir']}")


@app.command()
def sweep(file: Annotated[Path, typer.Argument(help="Sweep YAML (grid of methods, densities, "
                                                "seeds, any config key).")],
          backend: Annotated[str, typer.Option(
              help="Where cells run: local (this machine) or ray (Ray tasks, `compress[ray]`).")] = "local",
          workers: Annotated[Optional[int], typer.Option(
              min=1, help="--backend local: worker processes for the cells (default 1).")] = None,
          address: Annotated[Optional[str], typer.Option(
              help="--backend ray: the cluster (auto, HOST:6379 or ray://HOST:10001; default "
              "$RAY_ADDRESS, else a private Ray instance on this machine).")] = None,
          config: ConfigOpt = None, set_: SetOpt = None, seed: SeedOpt = None,
          out: OutOpt = None, as_json: JsonOpt = False, track: TrackOpt = True,
          fresh: FreshOpt = False, plugin: PluginOpt = None) -> None:
    """Run a grid of prune cells over one shared pretrain; each cell is a tracked run."""
    from compress.config import tracking_settings
    from compress.sweep import load_sweep, run_sweep
    from compress.sweep.driver import check_cells, make_backend
    from compress.sweep.jobs import planned_tracking
    spec = load_sweep(file)
    inv = Invocation(config, set_, seed, out, as_json, track, plugins=plugin)
    # Cells, backend options and stores are checked before a tracker creates any file.
    check_cells(spec, inv.layers, inv.seed)
    runner = make_backend(backend, spec, workers, address)
    tracking = tracking_settings(spec.config, *inv.layers)
    runner.check(planned_tracking(track and tracking.enabled, tracking.experiment))
    env = inv.env(base=[spec.config])
    with _interruptible("interrupted: unfinished cells were cancelled; finished cells are kept "
                        "and a re-run reuses them"):
        result = run_sweep(spec, env, inv.layers, inv.seed, inv.out, runner=runner, fresh=fresh,
                           track=not isinstance(env.tracker, _null_tracker()),
                           experiment=tracking.experiment)
    if as_json:
        print(_json(result))
        return
    keys = [k for k in spec.grid]
    shown = ("test_accuracy", "test_auc")
    rows = [{**{k: r["cell"][k] for k in keys},
             **{m: f"{v:.4f}" for m, v in r["metrics"].items() if m in shown},
             "kept": f"{r['metrics']['density']:.4f}", "reused": "yes" if r["reused"] else ""}
            for r in result["rows"]]
    cols = [*keys, *[c for c in shown if rows and c in rows[0]], "kept", "reused"]
    _print_rows(rows, cols, f"sweep {spec.name}: {len(rows)} cells")
    print(f"results  {Path(result['root']) / 'results.json'}\nsweep run id  {result['run_id']}")


def _null_tracker():
    from compress.tracking.base import NullTracker
    return NullTracker


@app.command()
def report(sweep_name: Annotated[Optional[str], typer.Option(
               "--sweep", help="Sweep name: read its cells from MLflow.")] = None,
           source: Annotated[Optional[Path], typer.Option(
               "--from", help="A sweep's output folder (its results.json), instead of MLflow.")] = None,
           metric: Annotated[Optional[str], typer.Option(
               help="Metric to report (default test_auc for binary tasks, else test_accuracy).")] = None,
           out: OutOpt = None, as_json: JsonOpt = False) -> None:
    """Mean ± 95% CI per method and density over a sweep's seeds: Markdown, JSON and a plot."""
    from compress.sweep_report import rows_from_folder, rows_from_mlflow, write_report
    if (sweep_name is None) == (source is None):
        raise UserError("give exactly one of --sweep NAME (MLflow) or --from SWEEP_DIR")
    parent, tracker = None, None
    if source is not None:
        name, rows = rows_from_folder(source)
    else:
        from compress.tracking import make_tracker
        tracker = make_tracker(True, Invocation(None, None, None, None, False, True).config().tracking.experiment)
        name = sweep_name
        parent, rows = rows_from_mlflow(tracker, sweep_name)
    result = write_report(name, rows, metric, Path(out) if out else Path("reports") / name)
    if tracker is not None and parent is not None:
        with tracker.run("report", run_id=parent):
            tracker.log_artifacts(Path(result["files"]["markdown"]).parent, "report")
        result["logged_to"] = parent
    if as_json:
        print(_json(result))
        return
    print(Path(result["files"]["markdown"]).read_text())
    for kind, path in result["files"].items():
        print(f"{kind:<9} {path}")


@app.command()
def methods(as_json: JsonOpt = False, plugin: PluginOpt = None) -> None:
    """List the registered pruning methods (and where each comes from)."""
    from compress.registry import METHODS
    _load_plugins(plugin)
    entries = METHODS.entries()
    if as_json:
        print(_json({e.name: {"summary": e.summary, "origin": e.origin} for e in entries}))
        return
    width = max(len(e.name) for e in entries)
    for e in entries:
        where = "" if e.origin == "built-in" else f"  [{e.origin}]"
        print(f"{e.name:<{width}}  {e.summary}{where}")


def _load_plugins(names: list[str] | None) -> None:
    if names:
        from compress.plugins import load_plugins
        load_plugins(names)


def _catalog(kind: str, as_json: bool) -> None:
    from compress.catalog import catalog, render
    from compress.registry import DATASETS, MODELS
    items = catalog({"dataset": DATASETS, "model": MODELS}[kind])
    print(_json(items) if as_json else render(items))


@app.command()
def datasets(as_json: JsonOpt = False) -> None:
    """List the registered datasets with their options (the data.* keys)."""
    _catalog("dataset", as_json)


@app.command()
def models(as_json: JsonOpt = False) -> None:
    """List the registered models (and torchvision:NAME) with their options (model.* keys)."""
    _catalog("model", as_json)


# ------------------------------------------------------------------ registry
def _registry():
    from compress.tracking.registry import Registry
    return Registry()


def _print_rows(rows: list[dict], columns: list[str], title: str) -> None:
    from rich.console import Console
    from rich.table import Table
    t = Table(title=title)
    for c in columns:
        t.add_column(c)
    for r in rows:
        t.add_row(*("-" if r.get(c) is None else str(r.get(c)) for c in columns))
    Console().print(t)


@registry_app.command("list")
def registry_list(as_json: JsonOpt = False) -> None:
    """Registered models: versions, latest version, aliases."""
    models = _registry().models()
    if as_json:
        print(_json(models))
        return
    _print_rows([{**m, "aliases": ", ".join(f"{a}→v{v}" for a, v in m["aliases"].items())}
                 for m in models], ["name", "versions", "latest", "aliases"], "registered models")


@registry_app.command("show")
def registry_show(name: Annotated[str, typer.Argument(help="Registered model name.")],
                  as_json: JsonOpt = False) -> None:
    """A model's versions with their aliases, lineage tags and metrics."""
    info = _registry().show(name)
    if as_json:
        print(_json(info))
        return
    keys = ("method", "density", "dataset", "metric.test_accuracy", "metric.test_auc", "source_run")
    rows = [{"version": v["version"], "aliases": ", ".join(v["aliases"]),
             **{k: v["tags"].get(k) for k in keys}} for v in info["versions"]]
    _print_rows(rows, ["version", "aliases", *keys], name)


@registry_app.command("promote")
def registry_promote(name: Annotated[str, typer.Argument(help="Registered model name.")],
                     version: Annotated[str, typer.Argument(help="Version number.")],
                     alias: Annotated[str, typer.Option(help="Alias to point at the version.")] = "champion",
                     as_json: JsonOpt = False) -> None:
    """Point an alias (default `champion`) at a version."""
    out = _registry().promote(name, version, alias)
    if as_json:
        print(_json(out))
    else:
        was = f" (was v{out['previous']})" if out["previous"] else ""
        print(f"{name}@{alias} -> v{out['version']}{was}")


@registry_app.command("compare")
def registry_compare(name: Annotated[str, typer.Argument(help="Registered model name.")],
                     v1: Annotated[str, typer.Argument(help="First version.")],
                     v2: Annotated[str, typer.Argument(help="Second version.")],
                     as_json: JsonOpt = False) -> None:
    """Two versions side by side: lineage tags, metrics, size, latency."""
    out = _registry().compare(name, v1, v2)
    if as_json:
        print(_json(out))
        return
    _print_rows(out["rows"], ["key", *out["versions"]], f"{name}: v{v1} vs v{v2}")


def _require(value: str | None, stage: str) -> None:
    if not value:
        raise UserError(f"{stage} needs --from RUN_ID_OR_DIR (the output of an earlier stage)")


# ------------------------------------------------------------------ output
def _json(value) -> str:
    from compress.report import strict_json
    return strict_json(value)


def _emit(record: dict, as_json: bool) -> None:
    from compress.report import stage_json, stage_table
    if as_json:
        print(_json(stage_json(record)))
    else:
        stage_table(record)


def _emit_chain(result: dict, as_json: bool, main: str | None, gates=()) -> None:
    """Print the summary; then, if any quality gate failed, exit 3 with one line per gate."""
    from compress.gates import evaluate, failures
    from compress.report import chain_json
    summary = chain_json(result, main)
    try:
        checked = evaluate(list(gates), summary) if gates else None
    except UserError:  # a gate naming a missing value: still show what the run produced
        _print_summary(result, summary, as_json, main)
        raise
    if checked is not None:
        summary["gates"] = checked
        summary["gates_passed"] = all(g["passed"] for g in checked)
    _print_summary(result, summary, as_json, main)
    if not as_json:
        for g in checked or []:
            print(f"gate {'passed' if g['passed'] else 'FAILED'}: {g['gate']} "
                  f"(value {g['value']:.6g})")
    if checked and not summary["gates_passed"]:
        raise GateFailed("\n".join(failures(checked)))


def _print_summary(result: dict, summary: dict, as_json: bool, main: str | None) -> None:
    from compress.report import chain_table
    if as_json:
        print(_json(summary))
    else:
        chain_table(result, main)


def _forget_keyboard_interrupt() -> None:
    """Make `python -m compress` exit 130 after a handled Ctrl-C, as the console script does.

    CPython (3.11/3.12) records "unhandled KeyboardInterrupt" whenever a string exec/eval (which
    library code runs, e.g. generated functions) ends with one, even if a caller catches it; under
    `-m`, Py_RunMain then kills the process with SIGINT (exit -2) instead of our code. The flag is
    reset at the start of every string eval, so one empty eval clears it.
    """
    exec("pass", {})  # noqa: S102 - a constant string; see the docstring


def _freeze_heap() -> None:
    """Registered for interpreter exit (after mlflow's own exit hooks, which run first): the
    collector's passes during teardown otherwise walk every object of the loaded libraries
    (~1 s of CPU once mlflow, sqlalchemy and torch are in; issue 13). Objects still die by
    reference counting; everything was written and every run ended before this point."""
    import gc
    gc.freeze()


def main() -> None:
    import atexit

    from compress import interrupts
    from compress.core import dist
    atexit.unregister(_freeze_heap)  # once per process, however often main() runs in it
    atexit.register(_freeze_heap)
    dist.setup()  # only under torchrun (WORLD_SIZE > 1): join the group; rank 0 alone prints
    handlers = interrupts.install()  # SIGTERM ends a command like Ctrl-C: exit 130
    try:
        _main()
    finally:
        # Signals held after a finished registration stay noted while the process exits;
        # a command run in-process gets the caller's handlers back.
        if not interrupts.is_held():
            interrupts.restore(handlers)


def _main() -> None:
    import os

    try:
        app()
    except (UserError, GateFailed, Interrupted, Diverged, TrackingLost) as e:
        print(e if isinstance(e, (Interrupted, GateFailed)) else f"error: {e}", file=sys.stderr)
        if isinstance(e, Interrupted):
            _forget_keyboard_interrupt()
        sys.exit(e.exit_code)
    except OSError as e:  # unwritable --out, full disk, ...: the environment, not a bug
        if os.environ.get("COMPRESS_DEBUG"):
            raise
        where = f" ({e.filename})" if getattr(e, "filename", None) else ""
        print(f"error: {e.strerror or e}{where}; check the path and permissions "
              "(COMPRESS_DEBUG=1 shows the traceback)", file=sys.stderr)
        sys.exit(2)
