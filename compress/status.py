"""Status lines on stderr: what a CI log shows while a job runs (stdout belongs to --json).

Every line starts with PREFIX, so a reader (or a test) tells status from an error line
(`error: ...`), which is always the last line of a failed command.
"""

from __future__ import annotations

import os
import sys
import time

PREFIX = "[compress] "
DEFAULT_EVERY_S = 30.0


def say(message: str) -> None:
    """One status line on stderr (under torchrun, rank 0 only)."""
    from compress.core import dist
    if dist.is_main():
        print(PREFIX + message, file=sys.stderr, flush=True)


def every_seconds() -> float:
    """How often a long loop reports when stderr is not a terminal (COMPRESS_PROGRESS_SECONDS;
    0 turns the periodic lines off)."""
    raw = os.environ.get("COMPRESS_PROGRESS_SECONDS", "")
    try:
        value = float(raw) if raw else DEFAULT_EVERY_S
    except ValueError:
        return DEFAULT_EVERY_S
    return value if value >= 0 and value == value else DEFAULT_EVERY_S


class Throttle:
    """True at most once per `seconds` (the first call counts from creation)."""

    def __init__(self, seconds: float) -> None:
        self.seconds, self.last = seconds, time.monotonic()

    def due(self) -> bool:
        if self.seconds <= 0:
            return False
        now = time.monotonic()
        if now - self.last < self.seconds:
            return False
        self.last = now
        return True
