"""Tracking edge. The core never imports mlflow; stages talk to a `Tracker`."""

from compress.tracking.base import NullTracker, Tracker  # noqa: F401


def make_tracker(enabled: bool = True, experiment: str = "compress") -> "Tracker":
    """The MLflow tracker (imported lazily), or a no-op tracker when tracking is off."""
    if not enabled:
        return NullTracker()
    from compress.tracking.mlflow_tracker import MlflowTracker

    return MlflowTracker(experiment=experiment)
