"""Bad input: one clear line on stderr and exit status 2, never a traceback."""

from __future__ import annotations


class UsageError(Exception):
    """Something the user gave cannot work; the message says what and what to do."""
