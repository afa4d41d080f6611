"""Ctrl-C and SIGTERM held off a block that must not be cut half-way (plain Python).

A KeyboardInterrupt raised inside a C++ callback is not always a KeyboardInterrupt when it comes
out: one landing in `torch.save`'s write to a file came out as `RuntimeError: ... unexpected
pos`, so the trial failed as an error, no retry was queued, and the worker went on as if never
stopped. Blocks like that run with interrupts held, and the interrupt is raised after them.
"""

from __future__ import annotations

import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from types import FrameType

__all__ = ["INTERRUPTS", "interrupts_held"]

INTERRUPTS = (signal.SIGINT, signal.SIGTERM)


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
