"""Tracking edge. The core never imports mlflow; stages talk to a `Tracker`."""

import contextlib
from pathlib import Path

from compress.tracking.base import NullTracker, RankZeroTracker, Tracker  # noqa: F401


def make_tracker(enabled: bool = True, experiment: str = "compress") -> "Tracker":
    """The MLflow tracker (imported lazily), or a no-op tracker when tracking is off.

    Under torchrun (WORLD_SIZE > 1) rank 0 alone builds and uses it (RankZeroTracker)."""
    from compress.core.dist import launched_world
    if launched_world() > 1:
        return RankZeroTracker(lambda: _make(enabled, experiment))
    return _make(enabled, experiment)


def _make(enabled: bool, experiment: str) -> "Tracker":
    if not enabled:
        return NullTracker()
    from compress.tracking.mlflow_tracker import MlflowTracker

    with store_lock():  # N processes starting in a fresh folder: one creates the store
        return MlflowTracker(experiment=experiment)


@contextlib.contextmanager
def store_lock():
    """Hold an exclusive lock beside a local sqlite store while it is opened: creating the
    tables (MLflow's migrations) and the experiment is not safe from two processes at once."""
    import fcntl

    from compress.tracking.mlflow_tracker import default_tracking_uri
    uri = default_tracking_uri()
    if not uri.startswith("sqlite:///"):
        yield
        return
    db = Path(uri.removeprefix("sqlite:///"))
    if not db.parent.is_dir():
        yield  # MLflow reports the missing folder
        return
    with open(db.parent / f".{db.name}.lock", "a") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)
