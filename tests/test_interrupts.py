"""compress.interrupts: SIGINT/SIGTERM deferred inside a block, raised at its end unless it
committed; held signals stop the next stage (in-process, real signals to this process)."""

from __future__ import annotations

import os
import signal

import pytest

from compress import interrupts


@pytest.fixture
def installed():
    before = interrupts.install()
    yield
    interrupts.restore(before)


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_a_signal_waits_for_the_end_of_the_block(installed, sig):
    done = []
    with pytest.raises(KeyboardInterrupt):
        with interrupts.deferred():
            os.kill(os.getpid(), sig)
            with interrupts.deferred():  # nested: still noted, not raised
                os.kill(os.getpid(), sig)
            done.append("the block ran to its end")
            assert interrupts.pending()
    assert done and not interrupts.pending()
    with pytest.raises(KeyboardInterrupt):  # handlers are back: signals act at once
        os.kill(os.getpid(), sig)
        done.append("not reached")


def test_a_committed_block_holds_signals_until_the_next_stage(installed):
    with interrupts.deferred() as guard:
        guard.commit()
    os.kill(os.getpid(), signal.SIGINT)  # after the work: noted, nothing raised
    with interrupts.deferred():  # a store call while held does not raise either
        pass
    assert interrupts.is_held() and interrupts.pending()
    with pytest.raises(KeyboardInterrupt):
        interrupts.release()  # the next stage starts: the held signal stops it
    assert not interrupts.is_held() and not interrupts.pending()
    interrupts.release()  # nothing held: a no-op


def test_an_error_in_the_block_wins_over_a_pending_signal(installed):
    with pytest.raises(ValueError):
        with interrupts.deferred():
            os.kill(os.getpid(), signal.SIGINT)
            raise ValueError("the block's own error")
    assert not interrupts.pending()
