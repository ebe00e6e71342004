"""Tracking edge. The core never imports mlflow; stages talk to a `Tracker`."""

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

    return MlflowTracker(experiment=experiment)
