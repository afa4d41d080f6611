"""The launcher only watches the study: a storage that does not answer skips one look."""

from __future__ import annotations

import optuna
import pytest

from search.launch import _unless_storage_down


def test_a_storage_that_does_not_answer_skips_a_look_and_a_bug_still_raises() -> None:
    def database_restarting() -> int:
        raise optuna.exceptions.StorageInternalError("An exception is raised during the commit")

    def refused() -> int:
        raise ConnectionRefusedError(111, "Connection refused")

    def bug() -> int:
        raise KeyError("a bug")

    assert _unless_storage_down(database_restarting) is None
    assert _unless_storage_down(refused) is None
    assert _unless_storage_down(lambda: 7) == 7
    with pytest.raises(KeyError):
        _unless_storage_down(bug)
