"""Errors a user fixes, not bugs: one line that says what is wrong and what to do."""

from __future__ import annotations


class InputError(Exception):
    """Data or weights that are missing, corrupt or unusable.

    `search` prints the message as one line and exits with status 2, so it must name the file
    or folder and the fix (where to put a file, which option avoids a download).
    """
