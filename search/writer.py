"""A separate process that writes to MLflow, so tracking never competes with training.

Why a process and not a thread: an MLflow write is mostly Python (SQLAlchemy, file copies) and
holds the GIL, so a tracking thread stalls the training loop's kernel launches and, on a small
machine, oversubscribes the cores that PyTorch's intra-op threads spin on. Measured here on the
digits study: a tracking thread made 1-second trials 10-35% slower; the same writes in a
low-priority process cost the trial loop only the time to pickle a message. MLflow's own async
logging uses a thread, so it has the same problem. (W&B runs its writer as a separate service
process for the same reason.)

The writer keeps order (one queue), retries a failing write once, and reports failures instead
of raising: tracking must never kill a search. If the search process dies, the writer still
writes everything it was sent, then exits.
"""

from __future__ import annotations

import atexit
import functools
import itertools
import multiprocessing
import os
import queue
import threading
import time
from collections.abc import Callable
from typing import Any

# A request: (ticket or None, what, run key or None, fn, args, kwargs).
# fn(client, run_id_or_None, *args, **kwargs); a ticket asks for the result on the reply queue.
Request = tuple[int | None, str, int | None, Callable[..., Any], tuple[Any, ...], dict[str, Any]]

_ERROR = -1  # reply ticket of a failure report
ORPHAN_GRACE_SECONDS = 30.0  # time to write what was sent after the search process died
LOCKED_ATTEMPTS = 10  # tries of a write that meets "database is locked": ~30 s of backoff


def _serve(tracking_uri: str, requests: Any, replies: Any, parent_pid: int) -> None:
    try:
        os.nice(19)  # only idle CPU: the trials come first
    except OSError:
        pass
    import logging

    from mlflow import MlflowClient

    for name in ("mlflow", "alembic", "sqlalchemy"):
        logging.getLogger(name).setLevel(logging.WARNING)
    client = MlflowClient(tracking_uri=tracking_uri)
    run_ids: dict[int, Any] = {}
    open_runs: dict[int, str] = {}  # created and not yet ended: a lost worker's to fail
    threading.Thread(target=_watch_parent, args=(parent_pid, client, open_runs),
                     daemon=True).start()
    while True:
        try:
            item = requests.get(timeout=1.0)
        except queue.Empty:
            if os.getppid() != parent_pid:  # the search process died; everything is written
                _end_orphans(client, open_runs)
                return
            continue
        except Exception as e:  # noqa: BLE001 - a request that cannot be unpickled
            replies.put((_ERROR, None, f"MLflow writer: unreadable request: {e}"))
            continue
        if item is None:
            return
        ticket, what, key, fn, args, kwargs = item
        result, error = None, None
        attempt = 0
        while True:
            attempt += 1
            try:
                run_id = run_ids.get(key) if key is not None else None
                result = fn(client, run_id, *args, **kwargs)
                error = None
                break
            except Exception as e:  # noqa: BLE001 - reported, never raised
                error = f"MLflow: {what} failed: {type(e).__name__}: {e}"
                # Workers writing to one SQLite file at once meet "database is locked": that
                # passes, so wait and try again (with backoff); anything else is retried once.
                if attempt >= (LOCKED_ATTEMPTS if "locked" in str(e) else 2):
                    break
                time.sleep(min(0.25 * 2 ** (attempt - 1), 4.0))
        if fn is create_run and error is None and key is not None:
            run_ids[key] = open_runs[key] = str(result)
        if what == "end run":
            open_runs.pop(key, None)
        if error is not None:
            replies.put((_ERROR, None, error))
        if ticket is not None:
            replies.put((ticket, result, error))


def _end_orphans(client: Any, open_runs: dict[int, str]) -> None:
    """End the runs a dead search process left open: FAILED, its worker lost.

    The process may have died before Optuna knew the run's id, so nobody else can end them.
    """
    for run_id in list(open_runs.values()):
        try:
            if client.get_run(run_id).info.status != "RUNNING":
                continue
            client.set_tag(run_id, "optuna.state", "FAIL")
            client.set_tag(run_id, "optuna.fail_reason", "worker lost")
            client.set_terminated(run_id, status="FAILED")
        except Exception:  # noqa: BLE001, S112 - nothing is left to report to
            continue
    open_runs.clear()


def _watch_parent(parent_pid: int, client: Any, open_runs: dict[int, str]) -> None:
    """End the writer once the search process is gone and the writer had time to drain.

    A search process killed mid-message leaves a partial message in the pipe, on which a read
    blocks forever (the writer holds the pipe's other end too, so no EOF comes): the main loop's
    own check cannot help then.
    """
    while os.getppid() == parent_pid:
        time.sleep(1.0)
    time.sleep(ORPHAN_GRACE_SECONDS)
    _end_orphans(client, open_runs)
    os._exit(0)


def create_run(client: Any, _: None, experiment_id: str, run_name: str,
               tags: dict[str, str]) -> str:
    return str(client.create_run(experiment_id, run_name=run_name, tags=tags).info.run_id)


def _noop(client: Any, run_id: str | None) -> None:
    return None


def _stop(requests: Any, process: Any) -> None:
    """Let a writer nobody closed drain and stop, before `multiprocessing` joins it at exit.

    Without this, a program that never calls `close` (an exception on the way) hangs at exit:
    multiprocessing's exit handler waits for the writer, which waits for requests.
    """
    try:
        requests.put(None)
        process.join(timeout=60)
    finally:
        if process.is_alive():
            process.kill()


class Writer:
    """The search process's handle on the writer process."""

    def __init__(self, tracking_uri: str) -> None:
        # spawn, not fork: the search process has PyTorch's thread pools and SQLAlchemy
        # connections, which a forked child must not inherit.
        context = multiprocessing.get_context("spawn")
        self._requests = context.Queue()
        self._replies = context.Queue()
        # At exit, multiprocessing joins the thread that feeds the queue's pipe; with the writer
        # dead that thread blocks on a full pipe for ever, and the program never exits. Every
        # orderly stop (close, or _stop at exit) joins the writer after it has read the queue
        # to its end, so nothing is lost by not joining the feeder; a dead writer's requests
        # are lost anyway.
        self._requests.cancel_join_thread()
        self._process = context.Process(
            target=_serve, args=(tracking_uri, self._requests, self._replies, os.getpid()),
            name="mlflow-writer", daemon=False,
        )
        self._process.start()
        # Runs at exit before multiprocessing's own exit handler, which was registered earlier
        # (atexit runs handlers last-in first-out). A partial per writer: unregister by identity.
        self._at_exit = functools.partial(_stop, self._requests, self._process)
        atexit.register(self._at_exit)
        self._tickets = itertools.count()
        self._keys = itertools.count()
        self._results: dict[int, tuple[Any, str | None]] = {}
        self.errors: list[str] = []
        self.closed = False

    def new_key(self) -> int:
        return next(self._keys)

    def send(self, what: str, fn: Callable[..., Any], *args: Any, key: int | None = None,
             reply: bool = False, **kwargs: Any) -> int | None:
        """Queue `fn(client, run_id_of(key), *args, **kwargs)`; returns a ticket if `reply`."""
        if self.closed:
            raise RuntimeError("the MLflow writer is closed")
        ticket = next(self._tickets) if reply else None
        self._requests.put((ticket, what, key, fn, args, kwargs))
        return ticket

    def _lost(self, why: str) -> None:
        message = f"MLflow writer: {why}; tracking stopped, the search goes on"
        if message not in self.errors:
            self.errors.append(message)

    def result(self, ticket: int, *, timeout: float = 600.0) -> Any:
        """Wait for a ticket's result; None when that write failed or the writer is gone.

        Tracking never stops a search: a dead or stuck writer is reported in `errors`.
        """
        deadline = time.monotonic() + timeout
        while ticket not in self._results:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                self._lost(f"no answer in {timeout:.0f}s")
                return None
            if not self._process.is_alive() and self._replies.empty():
                self._lost(f"the process exited with status {self._process.exitcode}")
                return None
            try:
                got, result, error = self._replies.get(timeout=min(remaining, 1.0))
            except queue.Empty:
                continue
            if got == _ERROR:
                self.errors.append(error)
            else:
                self._results[got] = (result, error)
        return self._results.pop(ticket)[0]

    def ready(self, ticket: int) -> bool:
        """Whether a ticket's result has arrived, without waiting."""
        while ticket not in self._results:
            try:
                got, result, error = self._replies.get_nowait()
            except queue.Empty:
                return False
            if got == _ERROR:
                self.errors.append(error)
            else:
                self._results[got] = (result, error)
        return True

    def flush(self, *, timeout: float = 600.0) -> None:
        """Wait until everything sent so far is written."""
        ticket = self.send("flush", _noop, reply=True)
        assert ticket is not None
        self.result(ticket, timeout=timeout)

    def close(self) -> None:
        if self.closed:
            return
        atexit.unregister(self._at_exit)
        self.flush()
        self._requests.put(None)
        self._process.join(timeout=60)
        if self._process.is_alive():
            self._lost("did not stop")
            self._process.kill()
        self.closed = True
