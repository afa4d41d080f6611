"""Finding a study's space for a command: by name, from a user's file or module, or from the
reference a study stored when it was created (so that `--study NAME` finds a user's study
again, from search.run, search.report, search.refit and search.sync alike)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import spaces
from search.core.errors import UsageError
from search.core.names import REFERENCE  # noqa: F401 (re-exported)


def find(study: str, *, storage: str, name: str | None = None) -> spaces.Study:
    """The space `--study` names: a shipped or installed study, a file or module reference,
    or the reference stored with the Optuna study `name` (default: `study`). Bad input is a
    UsageError (one line); nothing is created."""
    try:
        return spaces.get_study(study)
    except ValueError as e:
        if spaces.is_reference(study):
            raise UsageError(str(e)) from None
        unknown = str(e)
    from search.storage.reading import load  # reads the storage without creating anything

    try:
        reference = load(storage, name or study, study).user_attrs.get(REFERENCE)
    except UsageError:
        reference = None
    if not reference:
        raise UsageError(unknown)
    try:
        return spaces.get_study(reference)
    except ValueError as e:
        raise UsageError(f"study {name or study!r} was created from {reference}, which no "
                         f"longer loads: {e}") from None


def reference(study: str) -> str | None:
    """What a study made with `--study study` stores to be found again (None: its name does)."""
    return spaces.canonical(study) if spaces.is_reference(study) else None


def check_same(stored: Mapping[str, Any] | None, study: str, *, name: str) -> None:
    """A resume must load the space the study was created from."""
    kept = (stored or {}).get(REFERENCE)
    asked = reference(study)
    if kept and asked and asked != kept:
        raise UsageError(f"study {name!r} was created from {kept}, not {asked}: give --study "
                         f"{name} to resume it, or --name NEW to start another study")
