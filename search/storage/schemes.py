"""The Optuna storages `--storage` takes, each declared once: the one list of them.

An entry says which URLs are its own, how it is opened, whether Optuna beats on it itself,
whether it serves several nodes, the file it keeps on this machine, its driver's "server did
not answer" errors, and how messages and the docs write it. search.storage.optuna_storage opens
by it, search.storage.reading checks a local file by it, the unsupported-URL message lists it,
and the tests iterate it and check that README.md's `--storage` table has one row per entry.

A new kind of storage is an entry here, its example URL in
tests/search_tests/test_storage_schemes.py, and its row in README.md's table (that test says
which row).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any

from optuna.storages.journal import BaseJournalBackend, JournalFileBackend, JournalRedisBackend

from search.core.errors import UsageError
from search.core.urls import mask_url, scheme, sqlite_file
from search.storage.journal_lock import FlockLock


def _no_file(url: str) -> str | None:
    return None


def _no_errors() -> tuple[type[BaseException], ...]:
    return ()


@dataclass(frozen=True)
class Scheme:
    """One kind of Optuna storage."""

    key: str  # its name here and in the tests' ids
    url_schemes: tuple[str, ...]  # what search.core.urls.scheme() gives for it ("": a path)
    form: str  # how messages and the docs write it: "postgresql://..." ("..." left out in errors)
    what: str  # its line in README.md's table (": across nodes" is added when `nodes`)
    # Serves the workers of several nodes (and is tested so, tests/search_tests/test_workers.py).
    nodes: bool = False
    # Its journal backend, made from the URL; None: an RDB, opened as Optuna's RDBStorage with
    # `engine_kwargs`, on which Optuna beats itself (a journal gets search.storage.heartbeat's).
    journal: Callable[[str], BaseJournalBackend] | None = None
    engine_kwargs: Mapping[str, Any] = field(default_factory=lambda: MappingProxyType({}))
    # The file it keeps on this machine ("" or ":memory:": none named), which a reader must not
    # create; None: it lives on a server.
    local_file: Callable[[str], str | None] = _no_file
    # Its driver's errors that mean "the server did not answer", imported only when asked (the
    # driver is there only when the storage is used); Optuna's own and OSError hold for all.
    unavailable_errors: Callable[[], tuple[type[BaseException], ...]] = _no_errors

    @property
    def optuna_heartbeat(self) -> bool:
        """Whether Optuna's heartbeat is Optuna's own here (an RDB), not search's (a journal)."""
        return self.journal is None


def _journal_file(url: str) -> BaseJournalBackend:
    path = Path(url)
    if path.is_dir():
        raise UsageError(f"storage {url!r} is a folder: give a journal file path inside it")
    path.parent.mkdir(parents=True, exist_ok=True)
    return JournalFileBackend(str(path), lock_obj=FlockLock(str(path)))


def _redis_errors() -> tuple[type[BaseException], ...]:
    try:
        from redis.exceptions import RedisError
    except ImportError:
        return ()
    return (RedisError,)


# pool_pre_ping survives a restarted database server (connections are checked).
_PRE_PING: Mapping[str, Any] = MappingProxyType({"pool_pre_ping": True})

# The first is the default (a path, as search.storage.stores fills it in); in this order in
# messages and in README.md's table.
SCHEMES: tuple[Scheme, ...] = (
    Scheme(key="journal", url_schemes=("",), form="a journal file path",
           what="serves many processes on one node",
           journal=_journal_file, local_file=lambda url: url),
    Scheme(key="sqlite", url_schemes=("sqlite",), form="sqlite:///FILE",
           what="Optuna's RDB storage in a SQLite file", local_file=sqlite_file),
    Scheme(key="postgresql", url_schemes=("postgresql", "postgres"), form="postgresql://...",
           what="Optuna's RDB storage, with connection pre-ping", nodes=True,
           engine_kwargs=_PRE_PING),
    Scheme(key="mysql", url_schemes=("mysql",), form="mysql://...",
           what="Optuna's RDB storage, with connection pre-ping", engine_kwargs=_PRE_PING),
    Scheme(key="redis", url_schemes=("redis", "rediss"), form="redis://...",
           what="Optuna's journal on Redis", nodes=True,
           journal=JournalRedisBackend, unavailable_errors=_redis_errors),
)


def find(url: str) -> Scheme:
    """The entry whose URLs `url` is one of; a UsageError naming every entry when none is."""
    kind = scheme(url)
    for entry in SCHEMES:
        if kind in entry.url_schemes:
            return entry
    forms = [entry.form.removesuffix("...") for entry in SCHEMES]
    raise UsageError(f"unsupported storage URL {mask_url(url)!r}: use "
                     f"{', '.join(forms[:-1])} or {forms[-1]}")
