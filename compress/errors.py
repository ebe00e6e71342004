"""The one exception type for user mistakes: the CLI prints its message on one line, exit 2."""


class UserError(Exception):
    """A problem with the user's input (config, paths, options): never shown as a traceback."""

    exit_code = 2


class GateFailed(Exception):
    """A quality gate did not hold (exit 3)."""

    exit_code = 3


class Interrupted(Exception):
    """Ctrl-C during a stage: the unfinished stage's folder was discarded (exit 130)."""

    exit_code = 130


class Diverged(Exception):
    """The loss became NaN or infinite: the stage stopped at once, nothing written (exit 4)."""

    exit_code = 4


class TrackingLost(Exception):
    """The tracking server stopped answering mid-run: finished stage folders are kept and a
    re-run completes their MLflow runs (exit 5)."""

    exit_code = 5
