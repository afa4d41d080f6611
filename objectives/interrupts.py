"""Interrupts that are not lost (plain Python).

Python can lose the KeyboardInterrupt a signal handler raises. One landing in `torch.save`'s
write to a file came out of torch as `RuntimeError: ... unexpected pos`, so the trial failed as
an error and no retry was queued. One landing in an at-fork hook (logging's, as a worker forked
its MLflow writer) was printed as "Exception ignored" and dropped. Either way the worker went on
as if its launcher had never stopped it. So a block that must not be cut half-way runs with
interrupts held (`interrupts_held`), and a stop asked of the process stays asked
(`request_stop`): `check_stop` raises it again between trials and epochs.
"""

from __future__ import annotations

import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from types import FrameType

__all__ = ["INTERRUPTS", "check_stop", "clear_stop", "interrupts_held", "request_stop"]

INTERRUPTS = (signal.SIGINT, signal.SIGTERM)

_stop_asked = False  # a plain flag: a signal handler must not wait on a lock


def request_stop() -> None:
    """Note that this process was told to stop (its SIGTERM handler calls this)."""
    global _stop_asked
    _stop_asked = True


def clear_stop() -> None:
    """Forget an earlier stop (a search starting in a process that ran one before)."""
    global _stop_asked
    _stop_asked = False


def check_stop() -> None:
    """Raise KeyboardInterrupt if this process was told to stop: again, if the first was lost."""
    if _stop_asked:
        raise KeyboardInterrupt


@contextmanager
def interrupts_held() -> Iterator[None]:
    """Hold Ctrl-C and SIGTERM while the block runs; deliver the first one that came after it.

    Python runs signal handlers in the main thread at its next check, whichever thread the
    kernel gave the signal to, so blocking the signal in the main thread (pthread_sigmask)
    does not hold it when other threads run (MLflow's queue feeder, the progress display):
    the handler itself is swapped for one that only takes note. Off the main thread, where
    handlers cannot be set, the block runs unprotected.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    caught: list[tuple[int, FrameType | None]] = []

    def note(signum: int, frame: FrameType | None) -> None:
        caught.append((signum, frame))

    # A handler set outside Python (getsignal gives None) cannot be put back: left as it is.
    previous = {number: signal.signal(number, note) for number in INTERRUPTS
                if signal.getsignal(number) is not None}
    try:
        yield
    finally:
        for number, handler in previous.items():
            signal.signal(number, handler)
        if caught:
            signum, frame = caught[0]
            handler = previous[signal.Signals(signum)]
            if callable(handler):
                handler(signum, frame)  # Python's Ctrl-C handler raises KeyboardInterrupt here
            elif handler == signal.SIG_DFL:
                signal.raise_signal(signum)
