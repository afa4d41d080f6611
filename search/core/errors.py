"""Bad input: one clear line on stderr and exit status 2, never a traceback."""

from __future__ import annotations


class UsageError(Exception):
    """Something the user gave cannot work; the message says what and what to do."""


class DeviceFailed(Exception):
    """The GPU failed in a way that leaves this process unable to use it (a sticky CUDA
    error): the process stops with this one line; a launcher starts a replacement."""


EXIT_DEVICE_FAILED = 3  # the exit status of a process stopped by DeviceFailed


class TrackingLost(Exception):
    """MLflow tracking stopped for good (its writer died again after being replaced): the
    search stops with this one line rather than run trials that nobody tracks."""


EXIT_TRACKING_LOST = 4  # the exit status of a search stopped by TrackingLost


def first_line(error: object) -> str:
    """An error's first line that says something, for a one-line message (its type when none
    does: some drivers' messages start with a blank line)."""
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    return lines[0] if lines else type(error).__name__
