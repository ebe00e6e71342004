"""SIGINT and SIGTERM: when they may interrupt, and when they must wait.

- `install()` (the CLI's main): SIGTERM behaves like Ctrl-C (KeyboardInterrupt), so both end
  the same way: runs KILLED, the unfinished stage's folder discarded, exit 130.
- `deferred()`: inside the block the signals are noted, not raised. An MLflow call runs inside
  one, so a store write is never cut in half (a half-done sqlite write left "database is
  locked" behind); the interrupt is raised when the block ends.
- A block that calls `guard.commit()` (a registration that went through) does not raise at
  its end: the signals stay noted until the next stage starts (`release()`, which raises) or
  the command ends, so a Ctrl-C after the work is done cannot turn success into failure.

Only the main thread installs handlers; elsewhere (workers' threads) the blocks do nothing.
"""

from __future__ import annotations

import contextlib
import signal
import threading
from typing import Iterator

SIGNALS = (signal.SIGINT, signal.SIGTERM)


class _State:
    depth = 0  # nested deferred() blocks
    held = False  # a committed block ended: signals wait for release()
    pending: list[int] = []
    saved: dict = {}  # the handlers to restore


_state = _State()


def _note(signum, frame) -> None:
    _state.pending.append(signum)


def _raise(signum, frame) -> None:
    raise KeyboardInterrupt


def _main_thread() -> bool:
    return threading.current_thread() is threading.main_thread()


def install() -> dict:
    """SIGTERM raises KeyboardInterrupt like SIGINT; returns the handlers to `restore`.
    A signal the parent chose to ignore (e.g. `nohup`, a background job) stays ignored."""
    if not _main_thread():
        return {}
    before = {s: signal.getsignal(s) for s in SIGNALS}
    if before[signal.SIGTERM] != signal.SIG_IGN:
        signal.signal(signal.SIGTERM, _raise)
    return before


def restore(before: dict) -> None:
    """The handlers `install` found (after a command run in-process); the state is reset."""
    if not _main_thread():
        return
    for s, handler in before.items():
        signal.signal(s, handler if handler is not None else signal.SIG_DFL)
    _state.depth, _state.held, _state.pending, _state.saved = 0, False, [], {}


def is_held() -> bool:
    return _state.held


def pending() -> bool:
    """A signal came inside a deferred() block (and has not been acted on yet)."""
    return bool(_state.pending)


class Guard:
    """What a deferred() block yields: the switch that says its work went through."""

    def __init__(self) -> None:
        self.committed = False

    def commit(self) -> None:
        """The block's work is done: a signal from now on must not undo or fail it."""
        self.committed = True


@contextlib.contextmanager
def deferred() -> Iterator[Guard]:
    """SIGINT/SIGTERM noted inside the block; raised (as KeyboardInterrupt) when the outermost
    block ends, unless it committed."""
    guard = Guard()
    if not _main_thread():
        yield guard
        return
    outermost = _state.depth == 0 and not _state.held
    if outermost:
        _state.saved = {s: signal.getsignal(s) for s in SIGNALS}
        for s, handler in _state.saved.items():
            if handler != signal.SIG_IGN:  # an ignored signal stays ignored
                signal.signal(s, _note)
    _state.depth += 1
    try:
        yield guard
    except BaseException:
        _state.depth -= 1
        if outermost:
            _end_block(guard, raising=False)  # the block's own error is what propagates
        raise
    _state.depth -= 1
    if outermost:
        _end_block(guard, raising=True)


def _end_block(guard: Guard, raising: bool) -> None:
    if guard.committed:
        _state.held = True  # handlers stay noting until release() or the command's end
        return
    _restore_saved()
    if raising:
        _raise_pending()
    _state.pending = []


def release() -> None:
    """A new stage starts: signals act again, and one that came while held stops it now."""
    if not _main_thread() or not _state.held:
        return
    _state.held = False
    _restore_saved()
    _raise_pending()


def _restore_saved() -> None:
    for s, handler in _state.saved.items():
        signal.signal(s, handler if handler is not None else signal.SIG_DFL)
    _state.saved = {}


def _raise_pending() -> None:
    if _state.pending:
        _state.pending = []
        raise KeyboardInterrupt
