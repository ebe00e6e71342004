"""The MLflow `Tracker`: with its helpers in compress/tracking (registry, signature), the only
code in the package that imports mlflow (lazily)."""

from __future__ import annotations

import contextlib
import functools
import json
import logging
import math
import os
import posixpath
import re
import ssl
import time
import urllib.error
import urllib.request
import warnings
from importlib import metadata
from pathlib import Path
from typing import Any, Iterator

from compress import interrupts
from compress.errors import Interrupted, TrackingLost, UserError

OUT_DIR_TAG = "compress.out_dir"
STAGE_ARTIFACT_PATH = "stage"
STAGE_FILE = "stage.json"
MODEL_ARTIFACT_NAME = "model"

# MLflow's own limits (mlflow.utils.validation); copied so a private module is not imported.
MAX_PARAMS_PER_BATCH = 100
MAX_METRICS_PER_BATCH = 1000
MAX_PARAM_VALUE_LENGTH = 6000
MAX_TAG_VALUE_LENGTH = 8000
MAX_MODEL_NAME_LENGTH = 256
MAX_ALIAS_LENGTH = 255

HEALTH_TIMEOUT_S = 5.0
READY_TIMEOUT_S = 120.0

# Set only when the user has not: quiet output, and an unreachable server fails in ~15 s
# (3 attempts x 4 s timeout + ~2 s backoff) instead of MLflow's multi-minute default.
_ENV_DEFAULTS = {
    "GIT_PYTHON_REFRESH": "quiet",
    "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR": "false",
    "MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT": "true",
    "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "2",
    "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1",
    "MLFLOW_HTTP_REQUEST_TIMEOUT": "4",
}
_QUIET_LOGGERS = ("mlflow", "alembic")

# Characters MLflow allows in param, metric and tag keys (on POSIX).
_BAD_KEY_CHARS = re.compile(r"[^\w/.\- :]")

# MLflow error codes that mean "no such run" when looking a run up by id.
_NOT_FOUND_CODES = {"RESOURCE_DOES_NOT_EXIST", "NOT_FOUND", "INVALID_PARAMETER_VALUE"}


def _import_mlflow():
    """mlflow, imported with its start-up chatter (git probing, DB migrations, URLs) off."""
    # Env defaults are re-applied per tracker (cheap); mlflow reads most of them per request.
    for key, value in _ENV_DEFAULTS.items():
        os.environ.setdefault(key, value)
    return _quiet_import()


@functools.cache
def _quiet_import():
    user_chose_level = "MLFLOW_LOGGING_LEVEL" in os.environ
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        import mlflow
        import mlflow.onnx  # noqa: F401
    # mlflow configures its loggers at import, so levels are lowered afterwards.
    if not user_chose_level:
        for name in _QUIET_LOGGERS:
            logging.getLogger(name).setLevel(logging.WARNING)
    warnings.filterwarnings("ignore", module=r"mlflow(\.|$)")
    return mlflow


def _one_line(text: object) -> str:
    """First line of an error message, whitespace collapsed, for a one-line UserError."""
    lines = str(text).strip().splitlines() or [""]
    return " ".join(lines[0].split())


def _store_call(doing: str):
    """A tracker method that talks to the store: SIGINT/SIGTERM wait until it returns (a write
    is never cut in half), and a server that stopped answering becomes TrackingLost."""
    def wrap(fn):
        @functools.wraps(fn)
        def call(self, *args, **kwargs):
            with interrupts.deferred(), self._watch(doing):
                return fn(self, *args, **kwargs)
        return call
    return wrap


def default_tracking_uri() -> str:
    """MLFLOW_TRACKING_URI, else a sqlite store in the current working directory."""
    return os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{Path.cwd() / 'mlflow.db'}"


def check_reachable(uri: str, timeout: float = HEALTH_TIMEOUT_S) -> None:
    """Fail fast (one request, no retries) when an http(s) tracking server does not answer."""
    if not uri.startswith(("http://", "https://")):
        return
    try:
        with urllib.request.urlopen(f"{uri.rstrip('/')}/health", timeout=timeout):
            pass
    except urllib.error.HTTPError:
        # Something answered (auth, proxy, older server): reachable; MLflow reports the rest.
        return
    except (urllib.error.URLError, OSError) as exc:
        reason = getattr(exc, "reason", exc)
        if isinstance(reason, ssl.SSLError):
            # TLS settings (MLFLOW_TRACKING_INSECURE_TLS, cert paths) are MLflow's to apply.
            return
        raise UserError(
            f"MLflow tracking server at {uri} is unreachable ({_one_line(reason)}); "
            "start it or unset MLFLOW_TRACKING_URI to use the local store") from None


def flatten(params: dict, prefix: str = "") -> dict[str, Any]:
    """{"a": {"b": 1}} -> {"a.b": 1}; non-dict values are kept as they are."""
    flat: dict[str, Any] = {}
    for key, value in params.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict) and value:
            flat.update(flatten(value, f"{name}."))
        else:
            flat[name] = value
    return flat


def clean_key(key: object) -> str:
    """A param/metric/tag key MLflow accepts: other characters become '_'."""
    return _BAD_KEY_CHARS.sub("_", str(key))


def _truncate(value: object, limit: int) -> str:
    text = str(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def metric_value(value: object) -> float | None:
    """A float MLflow stores faithfully, or None to skip.

    None, non-numbers and +-inf are skipped (MLflow silently clamps inf to 1.8e308);
    NaN is kept: MLflow stores and shows it, and a NaN loss is worth seeing.
    """
    if value is None or isinstance(value, (str, bytes)):
        return None
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return None if math.isinf(number) else number


def _chunks(items: list, size: int) -> Iterator[list]:
    for start in range(0, len(items), size):
        yield items[start:start + size]


def _resolves_elsewhere(name: str) -> bool:
    norm = posixpath.normpath(name)
    return norm != name or norm == "." or norm.startswith(("..", "/"))


def check_model_name(name: str) -> None:
    """MLflow's rules for registered-model names, checked before anything is logged."""
    problem = None
    if not isinstance(name, str) or not name.strip():
        problem = "it is empty"
    elif any(c in name for c in "/:"):
        problem = "it contains '/' or ':'"
    elif name != name.strip():
        problem = "it starts or ends with whitespace"
    elif _resolves_elsewhere(name):
        problem = "as a path it would resolve to another name"
    elif len(name) > MAX_MODEL_NAME_LENGTH:
        problem = f"it is longer than {MAX_MODEL_NAME_LENGTH} characters"
    if problem:
        raise UserError(f"invalid registered model name {name!r}: {problem}")


def check_alias(alias: str) -> None:
    """MLflow's rules for model aliases: [A-Za-z0-9_-], not 'latest', not a version 'v<N>'."""
    ok_chars = isinstance(alias, str) and alias and all(c.isalnum() or c in "_-" for c in alias)
    reserved = ok_chars and (alias.lower() == "latest"
                             or (alias[0] in "vV" and alias[1:].isdigit()))
    if not ok_chars or reserved or len(alias) > MAX_ALIAS_LENGTH:
        raise UserError(f"invalid model alias {alias!r}: use letters, digits, '_' or '-', "
                        "not 'latest' and not a version like 'v3'")


def _pinned(package: str) -> str:
    """`package==<installed version>` (explicit requirements: inferring them costs seconds)."""
    try:
        return f"{package}=={metadata.version(package)}"
    except metadata.PackageNotFoundError:
        return package


def _holds_run(folder: Path, run_id: str) -> bool:
    """Whether `folder` is still that run's stage (not a later run's written at the same path,
    nor another machine's folder that happens to have the same path); a stage.json that names
    no run is taken at its word."""
    try:
        return json.loads((folder / STAGE_FILE).read_text()).get("run_id", run_id) == run_id
    except (OSError, ValueError):
        return False


def find_stage_dir(root: Path) -> Path | None:
    """The folder holding stage.json: root itself, else the shallowest one below it."""
    if (root / STAGE_FILE).is_file():
        return root
    hits = sorted(root.rglob(STAGE_FILE), key=lambda p: len(p.parts))
    return hits[0].parent if hits else None


class MlflowTracker:
    """Runs, params, metrics, artifacts and ONNX model versions in MLflow.

    Tracking URI: MLFLOW_TRACKING_URI, else ./mlflow.db (sqlite) with artifacts in ./mlruns.
    The registry uses the same URI.
    """

    def __init__(self, experiment: str = "compress") -> None:
        self._mlflow = _import_mlflow()
        from mlflow.exceptions import MlflowException

        self._MlflowException = MlflowException
        self.uri = default_tracking_uri()
        self._local = not os.environ.get("MLFLOW_TRACKING_URI")
        check_reachable(self.uri)
        self._activate()
        self._client = self._mlflow.MlflowClient(tracking_uri=self.uri, registry_uri=self.uri)
        self._stack: list[str] = []
        self._lost: str | None = None  # why the server is taken as gone (no more calls)
        self.experiment_id = self._experiment(experiment)

    # --- setup -------------------------------------------------------------------------

    def _activate(self) -> None:
        """Point mlflow's fluent API (runs, log_model) at this tracker's store.

        mlflow.set_tracking_uri also exports MLFLOW_TRACKING_URI/MLFLOW_REGISTRY_URI to
        os.environ; that is undone, or a later tracker in this process (another cwd) would
        mistake this store for one the user chose.
        """
        saved = {k: os.environ.get(k) for k in ("MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI")}
        self._mlflow.set_tracking_uri(self.uri)
        self._mlflow.set_registry_uri(self.uri)
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value

    def _experiment(self, name: str) -> str:
        """Id of the experiment, created on first use (local store: artifacts in ./mlruns)."""
        try:
            found = self._client.get_experiment_by_name(name)
            if found is None:
                return self._create_experiment(name)
        except self._MlflowException as exc:
            raise UserError(f"cannot use MLflow experiment {name!r} at {self.uri}: "
                            f"{_one_line(exc.message)}") from None
        if found.lifecycle_stage == "deleted":
            raise UserError(f"MLflow experiment {name!r} in {self.uri} is deleted; restore it "
                            f"(`mlflow experiments restore --experiment-id "
                            f"{found.experiment_id}`) or use another experiment name")
        return found.experiment_id

    def _create_experiment(self, name: str) -> str:
        location = (Path.cwd() / "mlruns").as_uri() if self._local else None
        try:
            return self._client.create_experiment(name, artifact_location=location)
        except self._MlflowException:
            # Another process created it in the meantime.
            found = self._client.get_experiment_by_name(name)
            if found is None:
                raise
            return found.experiment_id

    # --- a server lost mid-run ----------------------------------------------------------

    @contextlib.contextmanager
    def _watch(self, doing: str) -> Iterator[None]:
        """An error from a server that no longer answers /health is TrackingLost (one line);
        after that no call reaches the network again (each would retry for seconds)."""
        if self._lost:
            raise TrackingLost(self._lost)
        try:
            yield
        except (UserError, TrackingLost):
            raise
        except Exception:
            if not self._server_gone():
                raise
            self._lost = (f"the MLflow tracking server at {self.uri} stopped answering while "
                          f"{doing}; finished stage folders are kept: start the server and "
                          "re-run the same command (it completes their MLflow runs)")
            self._forget_active_runs()
            raise TrackingLost(self._lost) from None

    def _server_gone(self) -> bool:
        try:
            check_reachable(self.uri)
        except UserError:
            return True
        return False

    def _forget_active_runs(self) -> None:
        """Drop mlflow's record of active runs without calling the server, so its exit hook
        (which ends them) does not retry against a dead server."""
        with contextlib.suppress(Exception):
            from mlflow.tracking import fluent
            fluent._active_run_stack.get().clear()
            os.environ.pop("MLFLOW_RUN_ID", None)

    # --- runs --------------------------------------------------------------------------

    @contextlib.contextmanager
    def run(self, name: str, tags: dict[str, str] | None = None,
            run_id: str | None = None) -> Iterator[str]:
        """Start (or resume) a run, nested under the active one; FAILED if the body raises
        (KILLED on Ctrl-C/SIGTERM)."""
        current = self._start(name, tags, run_id)
        self._stack.append(current)
        try:
            yield current
        except BaseException as exc:
            status = "KILLED" if isinstance(exc, (KeyboardInterrupt, Interrupted)) else "FAILED"
            # Ending must not hide the original error (e.g. the server went away).
            with contextlib.suppress(Exception):
                self._end(current, status)
            raise
        else:
            self._end(current, "FINISHED")

    @_store_call("starting a run")
    def _start(self, name: str, tags: dict[str, str] | None, run_id: str | None) -> str:
        self._activate()
        if run_id is not None:
            self._get_run(run_id)
        # Nested under this tracker's run, or under any run the process left active.
        nested = bool(self._stack) or self._mlflow.active_run() is not None
        clean_tags = {clean_key(k): _truncate(v, MAX_TAG_VALUE_LENGTH)
                      for k, v in (tags or {}).items()}
        active = self._mlflow.start_run(
            run_id=run_id, experiment_id=None if run_id else self.experiment_id,
            run_name=None if run_id else name, nested=nested, tags=clean_tags or None)
        return active.info.run_id

    def _end(self, run_id: str, status: str) -> None:
        self._stack.remove(run_id)
        if self._lost:
            return  # nothing reaches the server; its active-run record was dropped
        self._terminate(run_id, status)

    @_store_call("ending a run")
    def _terminate(self, run_id: str, status: str) -> None:
        active = self._mlflow.active_run()
        if active is not None and active.info.run_id == run_id:
            self._mlflow.end_run(status=status)
        else:
            self._client.set_terminated(run_id, status=status)

    def _current(self) -> str:
        if not self._stack:
            raise RuntimeError("no active run: call this inside `with tracker.run(...)`")
        return self._stack[-1]

    def _get_run(self, run_id: str):
        """The run, or a UserError naming the store when there is no such run."""
        try:
            return self._client.get_run(run_id)
        except self._MlflowException as exc:
            if exc.error_code not in _NOT_FOUND_CODES:
                raise
        raise UserError(f"no MLflow run {run_id} in {self.uri}; pass a run id from "
                        "`compress ... --json` or a stage folder")

    # --- logging -----------------------------------------------------------------------

    @_store_call("logging params")
    def log_params(self, params: dict) -> None:
        """Flattened `a.b.c` params, in batches of 100; re-logging an equal value is a no-op."""
        from mlflow.entities import Param

        run_id = self._current()
        flat = {clean_key(k): _truncate(v, MAX_PARAM_VALUE_LENGTH)
                for k, v in flatten(params).items()}
        existing = self._client.get_run(run_id).data.params
        self._check_param_conflicts(run_id, flat, existing)
        new = [Param(k, v) for k, v in flat.items() if k not in existing]
        for chunk in _chunks(new, MAX_PARAMS_PER_BATCH):
            self._client.log_batch(run_id, params=chunk, synchronous=True)

    @staticmethod
    def _check_param_conflicts(run_id: str, flat: dict[str, str],
                               existing: dict[str, str]) -> None:
        # MLflow params are write-once; say so plainly instead of an API error.
        for key, value in flat.items():
            if key in existing and existing[key] != value:
                raise UserError(f"MLflow run {run_id} already has param {key}={existing[key]!r}; "
                                f"it cannot change to {value!r} (start a new run instead)")

    @_store_call("logging metrics")
    def log_metrics(self, metrics: dict[str, float], step: int | None = None) -> None:
        """One batched call; None/inf/non-numeric values are skipped."""
        now = int(time.time() * 1000)
        self._log_metric_entities(self._metrics(metrics, now, step or 0))

    @_store_call("logging metrics")
    def log_history(self, rows: list[dict[str, float]], step_key: str = "epoch") -> None:
        """Each row's values at step row[step_key] (row index if absent), ≤1000 per batch."""
        now = int(time.time() * 1000)
        entities = []
        for index, row in enumerate(rows):
            step = int(row.get(step_key, index))
            values = {k: v for k, v in row.items() if k != step_key}
            entities.extend(self._metrics(values, now, step))
        self._log_metric_entities(entities)

    @staticmethod
    def _metrics(values: dict, timestamp: int, step: int) -> list:
        from mlflow.entities import Metric

        kept = {k: metric_value(v) for k, v in values.items()}
        return [Metric(key=clean_key(k), value=v, timestamp=timestamp, step=step)
                for k, v in kept.items() if v is not None]

    def _log_metric_entities(self, entities: list) -> None:
        run_id = self._current()
        for chunk in _chunks(entities, MAX_METRICS_PER_BATCH):
            self._client.log_batch(run_id, metrics=chunk, synchronous=True)

    @_store_call("uploading artifacts")
    def log_artifacts(self, directory: Path, artifact_path: str | None = None) -> None:
        directory = Path(directory)
        if not directory.is_dir():
            raise FileNotFoundError(f"artifact folder {directory} does not exist")
        self._client.log_artifacts(self._current(), str(directory), artifact_path)

    @_store_call("setting tags")
    def set_tags(self, tags: dict[str, str]) -> None:
        from mlflow.entities import RunTag

        run_id = self._current()
        entities = [RunTag(clean_key(k), _truncate(v, MAX_TAG_VALUE_LENGTH))
                    for k, v in tags.items()]
        for chunk in _chunks(entities, MAX_PARAMS_PER_BATCH):
            self._client.log_batch(run_id, tags=chunk, synchronous=True)

    # --- model registry ----------------------------------------------------------------

    def check_register(self, name: str, alias: str) -> None:
        check_model_name(name)
        check_alias(alias)

    @_store_call("registering the model")
    def register_onnx(self, onnx_path: Path, name: str, *, tags: dict[str, str],
                      alias: str, input_example=None, providers: list[str] | None = None) -> dict:
        """Log the ONNX model under the active run, register a version, tag it, set the alias.

        `providers` are the onnxruntime execution providers recorded in the MLmodel file
        (what a deployment loads it with); default: the CPU provider only. The signature is
        the graph's inputs and outputs (compress.tracking.signature); `input_example` is
        saved beside it (a few real inputs, as the model takes them).

        Nothing half-registered remains on failure: the new version (and the registered
        model, if this call created it) is deleted before the error propagates. SIGINT/SIGTERM
        wait for the call; one that came during it undoes the registration the same way.
        """
        check_model_name(name)
        check_alias(alias)
        onnx_path = Path(onnx_path)
        if not onnx_path.is_file():
            raise UserError(f"ONNX file {onnx_path} does not exist")
        run_id = self._current()
        info = self._log_onnx(onnx_path, input_example, providers)
        version_tags = {clean_key(k): str(v) for k, v in tags.items()}
        version, created_model = None, False
        try:
            if interrupts.pending():  # came while the model was logged: register nothing
                raise KeyboardInterrupt
            created_model = self._ensure_registered_model(name)
            version = self._client.create_model_version(
                name, source=info.model_uri, run_id=run_id, tags=version_tags,
                model_id=info.model_id, await_creation_for=0).version
            self._wait_ready(name, version)
            self._client.set_registered_model_alias(name, alias, version)
            if interrupts.pending():  # Ctrl-C/SIGTERM came meanwhile: all or nothing
                raise KeyboardInterrupt
        except BaseException:
            self._rollback(name, version, created_model)
            raise
        self._link_logged_model(info.model_id, name, version)
        return {"name": name, "version": int(version), "alias": alias,
                "model_uri": f"models:/{name}@{alias}", "model_id": info.model_id}

    def _log_onnx(self, onnx_path: Path, input_example, providers: list[str] | None):
        import onnx

        from compress.tracking.signature import onnx_signature

        self._activate()
        model = onnx.load(str(onnx_path))
        # The signature comes from the graph (what a server enforces), not inferred from the
        # example; explicit providers: mlflow's default list names CUDA and warns where missing.
        return self._mlflow.onnx.log_model(
            model, name=MODEL_ARTIFACT_NAME, input_example=input_example,
            signature=onnx_signature(model),
            pip_requirements=[_pinned("onnxruntime"), _pinned("onnx")],
            onnx_execution_providers=list(providers or ["CPUExecutionProvider"]))

    def _ensure_registered_model(self, name: str) -> bool:
        """Create the registered model if missing; True if this call created it."""
        try:
            self._client.create_registered_model(name)
            return True
        except self._MlflowException as exc:
            if exc.error_code in ("RESOURCE_ALREADY_EXISTS", "ALREADY_EXISTS"):
                return False
            raise

    def _wait_ready(self, name: str, version: str, timeout: float = READY_TIMEOUT_S) -> None:
        deadline = time.monotonic() + timeout
        while True:
            status = self._client.get_model_version(name, version).status
            if status == "READY":
                return
            if status == "FAILED_REGISTRATION" or time.monotonic() > deadline:
                raise RuntimeError(f"model version {name}/{version} is {status}, not READY")
            time.sleep(0.5)

    def _rollback(self, name: str, version: str | None, created_model: bool) -> None:
        # Best effort: the original error matters more than a failed cleanup.
        with contextlib.suppress(Exception):
            if version is not None:
                self._client.delete_model_version(name, version)
        with contextlib.suppress(Exception):
            if created_model:
                self._client.delete_registered_model(name)

    def _link_logged_model(self, model_id: str, name: str, version: str) -> None:
        # What mlflow.register_model does too: lets the UI show the logged model's versions.
        key = "mlflow.modelVersions"
        with contextlib.suppress(Exception):
            current = self._client.get_logged_model(model_id).tags.get(key)
            entries = json.loads(current) if current else []
            entries.append({"name": name, "version": str(version)})
            self._client.set_logged_model_tags(model_id, {key: json.dumps(entries)})

    # --- lookup ------------------------------------------------------------------------

    @_store_call("fetching a run")
    def fetch_run(self, run_id: str, dest: Path) -> Path:
        """The run's stage folder: its local out_dir if still there, else downloaded to dest."""
        run = self._get_run(run_id)
        out_dir = run.data.tags.get(OUT_DIR_TAG)
        if out_dir and _holds_run(Path(out_dir), run_id):
            return Path(out_dir)
        dest = Path(dest)
        dest.mkdir(parents=True, exist_ok=True)
        try:
            local = self._client.download_artifacts(run_id, STAGE_ARTIFACT_PATH, str(dest))
        except (self._MlflowException, OSError) as exc:
            raise UserError(f"MLflow run {run_id} has no '{STAGE_ARTIFACT_PATH}' artifacts to "
                            f"download ({_one_line(exc)})") from None
        found = find_stage_dir(Path(local))
        if found is None:
            raise UserError(f"MLflow run {run_id} has no {STAGE_FILE} under its "
                            f"'{STAGE_ARTIFACT_PATH}' artifacts")
        return found

    def describe(self) -> str:
        return self.uri

    @_store_call("looking up a run")
    def exists(self, run_id: str) -> bool:
        self._activate()
        try:
            self._client.get_run(run_id)
        except self._MlflowException as exc:
            if exc.error_code in _NOT_FOUND_CODES:
                return False
            raise
        return True

    @_store_call("looking up a run")
    def run_status(self, run_id: str) -> str | None:
        try:
            return self._client.get_run(run_id).info.status
        except self._MlflowException as exc:
            if exc.error_code in _NOT_FOUND_CODES:
                return None
            raise

    @_store_call("ending stale runs")
    def end_stale_children(self, parent_run_id: str) -> list[str]:
        self._activate()
        experiment = self._client.get_run(parent_run_id).info.experiment_id
        runs = self._client.search_runs(
            [experiment], max_results=1000,
            filter_string=f"tags.mlflow.parentRunId = '{parent_run_id}' and "
                          "attributes.status = 'RUNNING'")
        ended = [run.info.run_id for run in runs if run.info.run_id not in self._stack]
        for run_id in ended:
            self._client.set_terminated(run_id, status="KILLED")
        return ended

    @_store_call("searching runs")
    def find_runs(self, tags: dict[str, str], status: str | None = "FINISHED") -> list[dict]:
        self._activate()
        # Values are names and hashes this package writes (no quotes in them).
        terms = [f"tags.`{clean_key(k)}` = '{v}'" for k, v in tags.items()]
        if status:
            terms.append(f"attributes.status = '{status}'")
        runs = self._client.search_runs([self.experiment_id], " and ".join(terms),
                                        max_results=50000, order_by=["attributes.start_time ASC"])
        return [{"run_id": r.info.run_id, "tags": dict(r.data.tags),
                 "metrics": dict(r.data.metrics), "start_time": r.info.start_time} for r in runs]
