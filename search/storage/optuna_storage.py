"""Optuna storages by URL, of the kinds search.storage.schemes declares: a journal file (the
default), an RDB, a journal on a server."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import optuna
from optuna.storages import BaseStorage, JournalStorage, RDBStorage
from optuna.storages.journal import BaseJournalBackend
from optuna.trial import FrozenTrial

from search.core.errors import UsageError, first_line
from search.core.urls import mask_text, mask_url
from search.storage import schemes
from search.storage.heartbeat import HeartbeatJournalStorage, HeartbeatRDBStorage


def open_storage(url: str, *, heartbeat: int | None = None,
                 on_stale: Callable[[optuna.Study, FrozenTrial], None] | None = None
                 ) -> BaseStorage:
    """The Optuna storage behind `url`: a journal file path or a URL, of a kind in
    search.storage.schemes.

    `heartbeat` (seconds) turns on Optuna's heartbeat: a trial whose worker stops beating for
    twice that long is failed by the next worker that starts a trial (or a launcher's next
    look), and `on_stale` is called with it (to queue its retry). Optuna beats on an RDB; on
    the journal (a file, Redis) search.storage.heartbeat adds the same protocol.
    """
    try:
        kind = schemes.find(url)
        if kind.journal is not None:
            return _journal(kind.journal(url), heartbeat, on_stale)
        beat: dict[str, Any] = {}
        if heartbeat:
            beat = {"heartbeat_interval": heartbeat, "grace_period": 2 * heartbeat,
                    "heartbeat_stale_trial_callback": on_stale}
        return _rdb_storage(HeartbeatRDBStorage if heartbeat else RDBStorage, url,
                            engine_kwargs=dict(kind.engine_kwargs), **beat)
    except UsageError:
        raise
    except ImportError as e:
        raise UsageError(f"storage {mask_url(url)!r} needs a missing package: {e}") from None
    except Exception as e:  # any driver's connection or parse error
        reason = mask_text(first_line(e), url)
        raise UsageError(
            f"cannot open storage {mask_url(url)!r}: {reason} (check the URL and that the "
            "server is reachable)"
        ) from None


def _journal(backend: BaseJournalBackend, heartbeat: int | None,
             on_stale: Callable[[optuna.Study, FrozenTrial], None] | None) -> JournalStorage:
    if not heartbeat:
        return JournalStorage(backend)
    return HeartbeatJournalStorage(backend, heartbeat=heartbeat, on_stale=on_stale)


def _rdb_storage(cls: type[RDBStorage], url: str, **kwargs: Any) -> RDBStorage:
    """`cls(url, ...)`, tried again when it fails while creating its tables.

    Nodes that start together on an empty database all create Optuna's tables at once; every
    one but the first fails its commit ("An exception is raised during the commit"), and a
    second try finds the tables made.
    """
    for attempt in range(3):
        try:
            return cls(url, **kwargs)
        except Exception as e:  # noqa: BLE001 - re-raised unless it is that race
            if attempt == 2 or "during the commit" not in str(e):
                raise
            time.sleep(0.5 + attempt)
    raise AssertionError("unreachable")


def unavailable(error: BaseException) -> bool:
    """Whether `error` says the storage did not answer (a database restarting, a network
    blip), as opposed to a bug: Optuna's own storage error, a socket's, or a driver's whose
    errors are classes of its own (Redis'), as search.storage.schemes names them."""
    if isinstance(error, (optuna.exceptions.StorageInternalError, OSError)):
        return True
    return any(isinstance(error, kind.unavailable_errors()) for kind in schemes.SCHEMES)
