"""The tracking interface every stage uses, and a no-op implementation."""

from __future__ import annotations

import contextlib
import uuid
from pathlib import Path
from typing import Callable, Iterator, Protocol

from compress.errors import UserError


class Tracker(Protocol):
    def run(self, name: str, tags: dict[str, str] | None = None,
            run_id: str | None = None) -> contextlib.AbstractContextManager[str]:
        """Start (or resume, with run_id) a run; nested under the active run if there is one.

        Yields the run id. A run that exits with an exception is marked FAILED.
        """

    def log_params(self, params: dict) -> None:
        """Log a (nested) dict as flattened params `a.b.c`."""

    def log_metrics(self, metrics: dict[str, float], step: int | None = None) -> None: ...

    def log_history(self, rows: list[dict[str, float]], step_key: str = "epoch") -> None:
        """Per-step metric rows in one batched call (not one call per value)."""

    def log_artifacts(self, directory: Path, artifact_path: str | None = None) -> None: ...

    def set_tags(self, tags: dict[str, str]) -> None: ...

    def register_onnx(self, onnx_path: Path, name: str, *, tags: dict[str, str],
                      alias: str, input_example=None, providers: list[str] | None = None) -> dict:
        """Log the ONNX model with mlflow.onnx (its signature read from the graph, the input
        example, its execution providers), register a version, tag it, set the alias."""

    def check_register(self, name: str, alias: str) -> None:
        """Refuse a registration that would fail (bad name/alias, no registry) before any work."""

    def fetch_run(self, run_id: str, dest: Path) -> Path:
        """Local folder of a run's stage artifacts (downloaded if not present locally)."""

    def describe(self) -> str:
        """Where runs go, for the summary line (e.g. the tracking URI)."""

    def exists(self, run_id: str) -> bool:
        """Whether this store has the run (a resumed pipeline reopens its parent run)."""

    def run_status(self, run_id: str) -> str | None:
        """RUNNING | FINISHED | FAILED | KILLED, or None when this store has no such run."""

    def end_stale_children(self, parent_run_id: str) -> list[str]:
        """Mark child runs still RUNNING (their process was killed) as KILLED; their ids."""

    def find_runs(self, tags: dict[str, str], status: str | None = "FINISHED") -> list[dict]:
        """Runs of this experiment with all these tags (and status): run_id, tags, metrics,
        start_time, oldest first. A sweep reuses finished cells and stages through this."""


class NullTracker:
    """Tracking off: runs get local ids, nothing is logged."""

    @contextlib.contextmanager
    def run(self, name: str, tags=None, run_id=None) -> Iterator[str]:
        yield run_id or f"local-{uuid.uuid4().hex[:12]}"

    def log_params(self, params: dict) -> None:
        pass

    def log_metrics(self, metrics, step=None) -> None:
        pass

    def log_history(self, rows, step_key="epoch") -> None:
        pass

    def log_artifacts(self, directory, artifact_path=None) -> None:
        pass

    def set_tags(self, tags) -> None:
        pass

    def check_register(self, name: str, alias: str) -> None:
        raise UserError("--register needs the MLflow registry; drop --no-track "
                        "(or tracking.enabled: false)")

    def register_onnx(self, onnx_path, name, *, tags, alias, input_example=None,
                      providers=None) -> dict:
        self.check_register(name, alias)
        return {}

    def fetch_run(self, run_id: str, dest: Path) -> Path:
        raise UserError(f"{run_id!r} is not a stage folder, and tracking is off so it cannot "
                        "be looked up as an MLflow run id")

    def describe(self) -> str:
        return "tracking off"

    def exists(self, run_id: str) -> bool:
        return run_id.startswith("local-")

    def run_status(self, run_id: str) -> str | None:
        return None

    def end_stale_children(self, parent_run_id: str) -> list[str]:
        return []

    def find_runs(self, tags: dict[str, str], status: str | None = "FINISHED") -> list[dict]:
        return []


class RankZeroTracker:
    """Tracking under torchrun: rank 0 alone holds the real tracker and makes every call; every
    rank gets the call's result (run ids, fetched folders) or raises its error, so the ranks
    stay in step and exit with the same code. Other ranks never open an MLflow client."""

    def __init__(self, make: Callable[[], Tracker]):
        from compress.core import dist
        self._dist = dist
        self._inner = dist.on_main(make, share=False)  # None on other ranks

    def run(self, name: str, tags=None, run_id=None):
        return self._dist.main_context(lambda: self._inner.run(name, tags=tags, run_id=run_id))

    def __getattr__(self, name: str):
        if name.startswith("_"):
            raise AttributeError(name)

        def call(*args, **kwargs):
            return self._dist.on_main(lambda: getattr(self._inner, name)(*args, **kwargs))
        return call
