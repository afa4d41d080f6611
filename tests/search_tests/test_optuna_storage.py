"""Opening Optuna's storage by URL: which errors mean "the storage is away", and the RDB
storage's retry of the table-creation race between nodes starting together."""

from __future__ import annotations

from typing import Any

import optuna
import pytest
import redis.exceptions
from optuna.storages import RDBStorage

from search.core.errors import UsageError
from search.storage import optuna_storage
from search.storage.optuna_storage import open_storage, unavailable


@pytest.mark.parametrize("error", [
    optuna.exceptions.StorageInternalError("commit failed"),
    ConnectionRefusedError(111, "Connection refused"),
    TimeoutError("timed out"),
    redis.exceptions.ConnectionError("Error 111 connecting to 127.0.0.1:6390"),
    redis.exceptions.BusyLoadingError("Redis is loading the dataset in memory"),
])
def test_a_storage_that_does_not_answer_is_unavailable(error: BaseException) -> None:
    assert unavailable(error)


@pytest.mark.parametrize("error", [ValueError("bad value"), KeyError("study"),
                                   RuntimeError("a bug")])
def test_other_errors_are_not_taken_for_an_absent_storage(error: BaseException) -> None:
    assert not unavailable(error)


def test_the_table_creation_race_is_tried_again(monkeypatch: pytest.MonkeyPatch,
                                                tmp_path: Any) -> None:
    made = []

    class Racing(RDBStorage):
        def __init__(self, url: str, **kwargs: Any) -> None:
            made.append(url)
            if len(made) == 1:  # another node committed the tables first
                raise RuntimeError("An exception is raised during the commit. ...")
            super().__init__(url, **kwargs)

    monkeypatch.setattr(optuna_storage, "RDBStorage", Racing)
    monkeypatch.setattr(optuna_storage.time, "sleep", lambda s: None)
    storage = open_storage(f"sqlite:///{tmp_path / 'optuna.db'}")
    assert isinstance(storage, Racing) and len(made) == 2
    optuna.create_study(storage=storage, study_name="after-the-race")


def test_another_error_while_opening_is_one_usage_line(tmp_path: Any) -> None:
    with pytest.raises(UsageError, match="unsupported storage URL 'ftp://u:\\*\\*\\*@h/x'"):
        open_storage("ftp://u:secret@h/x")
