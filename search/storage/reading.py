"""Reading a study back from its storage, for a command that must not create one."""

from __future__ import annotations

from pathlib import Path

import optuna

from search.core.errors import UsageError
from search.core.urls import mask_url
from search.storage import schemes
from search.storage.optuna_storage import open_storage


def load(storage: str, name: str, study: str) -> optuna.Study:
    """The study, read without writing: a missing journal or SQLite file is not created."""
    missing = UsageError(f"no study {name!r} in {mask_url(storage)}: run python -m search.run "
                         f"--study {study}" + (f" --name {name}" if name != study else "")
                         + " first")
    path = schemes.find(storage).local_file(storage)  # a file, or None on a server
    if path not in (None, "", ":memory:") and not Path(path).is_file():
        raise missing  # rather than let Optuna create an empty journal or database
    try:
        return optuna.load_study(study_name=name, storage=open_storage(storage))
    except KeyError:
        raise missing from None
