"""Errors a user fixes, not bugs: one line that says what is wrong and what to do."""

from __future__ import annotations


class InputError(Exception):
    """Data or weights that are missing, corrupt or unusable.

    `search` prints the message as one line and exits with status 2, so it must name the file
    or folder and the fix (where to put a file, which option avoids a download).
    """


def one_line(error: BaseException) -> str:
    text = str(error).strip()
    first = text.splitlines()[0] if text else ""
    if first.startswith("Weights only load failed"):
        # Its advice (weights_only=False) would run arbitrary pickled code: keep just the fact.
        first = "weights-only unpickling failed"
    return f"{type(error).__name__}: {first}"[:160]
