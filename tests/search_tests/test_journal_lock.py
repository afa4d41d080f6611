"""The journal file's lock (search.storage.journal_lock): a process killed while it holds the lock
does not stop the others, on the default relative journal path, where Optuna's own lock was
never broken; and the lock excludes."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
from collections.abc import Callable
from pathlib import Path

import optuna
import pytest

from search.storage.journal_lock import FlockLock
from search.storage.optuna_storage import open_storage

REPO = Path(__file__).resolve().parents[2]
HOLD = """
import sys, time
from search.storage import schemes
backend = schemes.find(sys.argv[1]).journal(sys.argv[1])
backend._lock.acquire()  # as an append does, and then the process is killed
print("held", flush=True)
time.sleep(120)
"""


def _within(seconds: float, work: Callable[[], object]) -> bool:
    """Whether `work()` returned within `seconds` (a hang must fail the test, not stop it)."""
    done = threading.Event()

    def run() -> None:
        work()
        done.set()

    threading.Thread(target=run, daemon=True).start()
    return done.wait(seconds)


def test_a_worker_killed_holding_the_journal_lock_does_not_stop_the_others(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    journal = "mlruns/optuna.journal"  # relative, as the default is
    holder = subprocess.Popen([sys.executable, "-c", HOLD, journal], stdout=subprocess.PIPE,
                              text=True, cwd=tmp_path,
                              env={**os.environ, "PYTHONPATH": str(REPO)})
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "held"
        storage = open_storage(journal)
        assert not _within(0.5, lambda: optuna.create_study(storage=storage, study_name="a"))
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
    # Released with its holder: the next append goes through at once, no grace period.
    assert _within(10, lambda: optuna.create_study(storage=open_storage(journal),
                                                   study_name="b"))
    assert {s.study_name for s in optuna.get_all_study_summaries(open_storage(journal))} \
        >= {"b"}


def test_the_lock_excludes_another_holder_until_it_is_released(tmp_path: Path) -> None:
    first, second = FlockLock(str(tmp_path / "j")), FlockLock(str(tmp_path / "j"))
    first.acquire()
    taken = threading.Event()

    def take() -> None:
        second.acquire()
        taken.set()

    threading.Thread(target=take, daemon=True).start()
    assert not taken.wait(0.3)
    first.release()
    assert taken.wait(10)
    second.release()
    with pytest.raises(RuntimeError, match="not held"):
        second.release()
