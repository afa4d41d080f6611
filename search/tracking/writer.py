"""A separate process that writes to MLflow, so tracking never competes with training.

Why a process and not a thread: an MLflow write is mostly Python (SQLAlchemy, file copies) and
holds the GIL, so a tracking thread stalls the training loop's kernel launches and, on a small
machine, oversubscribes the cores that PyTorch's intra-op threads spin on. Measured here on the
digits study: a tracking thread made 1-second trials 10-35% slower; the same writes in a
low-priority process cost the trial loop only the time to pickle a message. MLflow's own async
logging uses a thread, so it has the same problem. (W&B runs its writer as a separate service
process for the same reason.)

The writer keeps order (one queue), retries a failing write once, and reports failures instead
of raising: tracking must never kill a search. Each request is confirmed by a reply; a writer
that dies is replaced and sent again what it had not confirmed (see `Writer`). Its output and
any crash go to a log file (`log_dir`), named in the warning. If the search process dies, the
writer still writes everything it was sent, then exits.
"""

from __future__ import annotations

import atexit
import faulthandler
import itertools
import multiprocessing
import os
import queue
import signal
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from search.core import process

# A request: (sequence number, ticket or None, what, run key or None, fn, args, kwargs).
# fn(client, run_id_or_None, *args, **kwargs); a ticket asks for the result back.
Request = tuple[int, int | None, str, int | None, Callable[..., Any], tuple[Any, ...],
                dict[str, Any]]
# A reply, one per request done (written, or failed and reported): (sequence number, ticket,
# result, error). Small, so that the pipe takes it whole (a write under PIPE_BUF is atomic):
# a writer killed mid-reply never leaves half a message for the search process to block on.
Reply = tuple[int, int | None, Any, str | None]

ORPHAN_GRACE_SECONDS = 30.0  # time to write what was sent after the search process died
LOCKED_ATTEMPTS = 10  # tries of a write that meets "database is locked": ~30 s of backoff
MAX_ERROR_LENGTH = 1000  # of an error message in a reply (see Reply)
START_ATTEMPTS = 3  # a writer that dies before it is ready is started again this often
READY = -1  # the sequence number of the reply that says a writer is up
WRITER_NICENESS = 5  # CFS weight 335 against a trial's 1024: it yields, and is never starved


def _serve(tracking_uri: str, requests: Any, replies: Any, parent_pid: int,
           log: str | None, run_ids: dict[int, str], forked: bool = False) -> None:
    """The writer process: requests in order, one reply each, until None comes."""
    if forked:  # the signal handlers a spawned writer starts with, not the worker's
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        signal.signal(signal.SIGINT, signal.default_int_handler)
    if log is not None:
        _log_to(log)
    try:
        # Below the trials, not at the bottom: at nice 19 a writer gets ~1.5% of a core that
        # training keeps busy (CFS weights 15 vs 1024), so on a loaded machine it took minutes
        # to import MLflow and a search's last flush waited on it (a killed-writer test ran
        # past 120 s beside two busy loops; at nice 5 it took 12 s).
        os.nice(WRITER_NICENESS)
    except OSError:
        pass
    import logging

    from mlflow import MlflowClient

    for name in ("mlflow", "alembic", "sqlalchemy"):
        logging.getLogger(name).setLevel(logging.WARNING)
    client = MlflowClient(tracking_uri=tracking_uri)
    run_ids = dict(run_ids)  # a replaced writer's runs, to go on writing to them
    open_runs: dict[int, str] = {}  # created and not yet ended: a lost worker's to fail
    threading.Thread(target=_watch_parent, args=(parent_pid, client, open_runs),
                     daemon=True).start()
    replies.put((READY, None, os.getpid(), None))
    while True:
        try:
            item = requests.get(timeout=1.0)
        except queue.Empty:
            if os.getppid() != parent_pid:  # the search process died; everything is written
                _end_orphans(client, open_runs)
                return
            continue
        if item is None:  # everything is written: go without the interpreter's teardown
            replies.close()
            replies.join_thread()  # (about 0.8 s of MLflow's and SQLAlchemy's modules)
            sys.stdout.flush()
            sys.stderr.flush()
            os._exit(0)
        seq, ticket, what, key, fn, args, kwargs = item
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
                error = f"MLflow: {what} failed: {type(e).__name__}: {e}"[:MAX_ERROR_LENGTH]
                # Workers writing to one SQLite file at once meet "database is locked": that
                # passes, so wait and try again (with backoff); anything else is retried once.
                if attempt >= (LOCKED_ATTEMPTS if "locked" in str(e) else 2):
                    break
                time.sleep(min(0.25 * 2 ** (attempt - 1), 4.0))
        if fn in CREATES and error is None and key is not None:
            run_ids[key] = open_runs[key] = str(result)
        if what == "end run":
            open_runs.pop(key, None)
        keep = ticket is not None or fn in CREATES  # a created run's id: for a replacement
        replies.put((seq, ticket, result if keep else None, error))


def _log_to(path: str) -> None:
    """Send this process's stdout, stderr and fatal-error stacks to the file at `path`.

    A writer's failure then has a reason on disk, not on a terminal that may be a progress
    display or nobody's: Python's tracebacks, MLflow's warnings, a crash's stack.
    """
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    os.dup2(fd, 1)
    os.dup2(fd, 2)
    os.close(fd)
    faulthandler.enable()  # onto the new stderr: segfaults and aborts leave their stacks


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


# Where each run this process created or found keeps its artifacts. MlflowClient.log_artifacts
# looks the location up with a get_run (a query for each of the run's tags, parameters, metrics
# and inputs): four fifths of writing a trial's artifacts, measured in a writer on digits. The
# location came in create_run's answer.
_artifact_uris: dict[str, str] = {}


def create_run(client: Any, _: None, experiment_id: str, run_name: str,
               tags: dict[str, str]) -> str:
    info = client.create_run(experiment_id, run_name=run_name, tags=tags).info
    _artifact_uris[info.run_id] = info.artifact_uri
    return str(info.run_id)


def log_artifacts(client: Any, run_id: str, folder: str) -> None:
    """`client.log_artifacts(run_id, folder)`, without its get_run when the location is known."""
    uri = _artifact_uris.get(run_id)
    if uri is None or str(client.tracking_uri).startswith("databricks"):  # profile-qualified
        client.log_artifacts(run_id, folder)
        return
    from mlflow.store.artifact.artifact_repository_registry import get_artifact_repository

    get_artifact_repository(uri, tracking_uri=client.tracking_uri).log_artifacts(folder)


def find_or_create_run(client: Any, _: None, experiment_id: str, run_name: str,
                       tags: dict[str, str]) -> str:
    """`create_run`, unless the run exists: a replacement re-sending what a dead writer may
    have written (it died after creating the run, before its reply reached the search)."""
    parent, number = tags.get("mlflow.parentRunId"), tags.get("optuna.trial_number")
    if parent and number is not None:
        found = client.search_runs(
            [experiment_id], max_results=1, order_by=["attributes.start_time ASC"],
            filter_string=(f"tags.`mlflow.parentRunId` = '{parent}' and "
                           f"tags.`optuna.trial_number` = '{number}'"))
        if found:
            _artifact_uris[found[0].info.run_id] = found[0].info.artifact_uri
            return str(found[0].info.run_id)
    return create_run(client, None, experiment_id, run_name, tags)


CREATES = (create_run, find_or_create_run)


def _noop(client: Any, run_id: str | None) -> None:
    return None


class Writer:
    """The search process's handle on the writer process.

    Every request stays pending until the writer's reply confirms it. A writer that dies is
    replaced once: the new one takes over the runs already created and is sent, in order,
    every request not confirmed (a run that may already exist is looked up, not created
    twice; MLflow takes a repeated metric, parameter or tag as the same). A second death sets
    `lost`: from then on requests are dropped, and the search stops (see search.execution.session).
    """

    def __init__(self, tracking_uri: str, *, log_dir: Path | None = None,
                 replacements: int = 1) -> None:
        self._uri = tracking_uri
        self._log_dir = log_dir
        self.replacements = replacements  # deaths a search survives
        self._pending: dict[int, Request] = {}  # sent, not confirmed; in sending order
        self._run_ids: dict[int, str] = {}  # run key -> id, as confirmed
        self._seq = itertools.count()
        self._tickets = itertools.count()
        self._keys = itertools.count()
        self._results: dict[int, tuple[Any, str | None]] = {}
        self.errors: list[str] = []
        self.deaths = 0  # deaths of a ready writer (not counting failed starts)
        self.lost: str | None = None  # why tracking stopped, after the last allowed death
        self.closed = False
        self._generation = 0
        self._failed_starts = 0
        self._start()
        # Runs at exit before multiprocessing's own exit handler, which was registered earlier
        # (atexit runs handlers last-in first-out): a writer nobody closed drains and stops.
        atexit.register(self._at_exit)

    # -- the process ---------------------------------------------------------------------

    def _start(self) -> None:
        # spawn, not fork: the search process has PyTorch's thread pools and SQLAlchemy
        # connections, which a forked child must not inherit. Except at the first start in a
        # CPU worker forked warm (search.execution.forked) while it runs one thread: then a fork
        # shares the MLflow pages the forkserver imported (a spawned writer holds ~200 MB of
        # its own), and what it inherits it never touches (it ends with os._exit, closing none
        # of the worker's connections).
        forking = self._generation == 0 and process.IN_WORKER and threading.active_count() == 1
        context = multiprocessing.get_context("fork" if forking else "spawn")
        self._requests = context.Queue()
        self._replies = context.Queue()
        # At exit, multiprocessing joins the thread that feeds the queue's pipe; with the writer
        # dead that thread blocks on a full pipe for ever, and the program never exits. Every
        # orderly stop joins the writer after it has read the queue to its end, so nothing is
        # lost by not joining the feeder; what a dead writer did not confirm is sent again.
        self._requests.cancel_join_thread()
        self._generation += 1
        self.log = (self._log_dir / f"writer-{os.getpid()}-{self._generation}.log"
                    if self._log_dir is not None else None)
        self._ready = False
        self._process = context.Process(  # type: ignore[attr-defined]
            target=_serve, name="mlflow-writer", daemon=False,
            args=(self._uri, self._requests, self._replies, os.getpid(),
                  str(self.log) if self.log else None, dict(self._run_ids), forking),
        )
        self._process.start()
        for request in self._pending.values():  # in order; a run perhaps made is looked up
            seq, ticket, what, key, fn, args, kwargs = request
            self._requests.put((seq, ticket, what, key,
                                find_or_create_run if fn is create_run else fn, args, kwargs))

    def _died(self) -> str:
        """Why the writer process ended, for a warning: its exit status and its log."""
        code = self._process.exitcode
        why = f"the process exited with status {code}" if code is None or code >= 0 else \
            f"the process was killed by signal {-code}"
        if not self._ready:
            why += " before it was ready"
        if self.log is not None:
            started = self.log.exists()
            why += (f" (its output: {self.log})" if started and self.log.stat().st_size else
                    " (nothing in its log)" if started else
                    " (it never ran: multiprocessing's spawn exits 255, silently, when the "
                    "exec of a new Python fails)" if code == 255 else
                    " (no output file: it ended before it could open one)")
        return why

    def _check(self) -> None:
        """Replace a writer that died (once); after that, tracking is lost."""
        if self.lost is not None or self._process.is_alive():
            return
        self._take_replies(self._replies, block=False)  # what it confirmed before it died
        if self._process.is_alive() or self.closed:
            return
        why = self._died()
        if not self._ready and self._failed_starts + 1 < START_ATTEMPTS:
            self._failed_starts += 1  # a start-up failure, not a lost writer: start it again
            self._restart(why, f"MLflow writer: {why}; started again")
            return
        self.deaths += 1
        if self.deaths > self.replacements:
            self._give_up(f"the MLflow writer died{' again' if self.deaths > 1 else ''}: {why}")
            return
        unconfirmed = len(self._pending)
        self._restart(why, f"MLflow writer: {why}; a new writer took over" + (
            f" and was sent again the {unconfirmed} writes not confirmed" if unconfirmed else ""))

    def _restart(self, why: str, news: str) -> None:
        self._forget_log()
        try:
            self._start()
        except Exception as e:  # noqa: BLE001 - tracking never stops a search by raising
            self._give_up(f"the MLflow writer died: {why}; a new one could not start: "
                          f"{type(e).__name__}: {e}")
            return
        self.errors.append(news)

    def _give_up(self, why: str) -> None:
        self.lost = why
        self.errors.append(f"{why}; tracking stopped")
        self._pending.clear()

    # -- replies -------------------------------------------------------------------------

    def _take(self, reply: Reply) -> None:
        seq, ticket, result, error = reply
        if seq == READY:
            self._ready = True
            return
        request = self._pending.pop(seq, None)
        if request is not None and request[4] in CREATES and error is None \
                and request[3] is not None:
            self._run_ids[request[3]] = str(result)
        if error is not None:
            self.errors.append(error)
        if ticket is not None:
            self._results[ticket] = (result, error)

    def _take_replies(self, replies: Any, *, block: bool, timeout: float = 1.0) -> None:
        """Take every reply there is (waiting up to `timeout` for the first when `block`)."""
        try:
            self._take(replies.get(timeout=timeout) if block else replies.get_nowait())
            while True:
                self._take(replies.get_nowait())
        except queue.Empty:
            return

    # -- the search process's side -------------------------------------------------------

    def new_key(self) -> int:
        return next(self._keys)

    def send(self, what: str, fn: Callable[..., Any], *args: Any, key: int | None = None,
             reply: bool = False, **kwargs: Any) -> int | None:
        """Queue `fn(client, run_id_of(key), *args, **kwargs)`; returns a ticket if `reply`."""
        if self.closed:
            raise RuntimeError("the MLflow writer is closed")
        ticket = next(self._tickets) if reply else None
        self._take_replies(self._replies, block=False)  # frees confirmed requests
        self._check()
        if self.lost is not None:
            return ticket  # dropped: search.sync rebuilds the runs from Optuna's record
        request: Request = (next(self._seq), ticket, what, key, fn, args, kwargs)
        self._pending[request[0]] = request
        self._requests.put(request)
        return ticket

    def result(self, ticket: int, *, timeout: float = 600.0) -> Any:
        """Wait for a ticket's result; None when that write failed or tracking is lost.

        Tracking never stops a search: a dead or stuck writer is reported in `errors`.
        """
        deadline = time.monotonic() + timeout
        while ticket not in self._results:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                self.errors.append(f"MLflow writer: no answer in {timeout:.0f}s")
                return None
            self._check()
            if self.lost is not None:
                return None
            self._take_replies(self._replies, block=True, timeout=min(remaining, 1.0))
        return self._results.pop(ticket)[0]

    def ready(self, ticket: int) -> bool:
        """Whether a ticket's result has arrived, without waiting."""
        if ticket not in self._results:
            self._take_replies(self._replies, block=False)
        return ticket in self._results or self.lost is not None

    def flush(self, *, timeout: float = 600.0) -> None:
        """Wait until everything sent so far is written."""
        ticket = self.send("flush", _noop, reply=True)
        assert ticket is not None
        self.result(ticket, timeout=timeout)

    def close(self) -> None:
        if self.closed:
            return
        atexit.unregister(self._at_exit)
        if self.lost is None:
            self.flush()
        self.closed = True
        self._halt()
        self._forget_log()

    def _forget_log(self) -> None:
        """Remove the writer's output file if it is empty: only a log with news is kept."""
        if self.log is not None and self.log.exists() and not self.log.stat().st_size:
            self.log.unlink()

    def _halt(self) -> None:
        """Let the writer drain its queue and stop; kill it if it does not."""
        if self._process.is_alive():
            self._requests.put(None)
            self._process.join(timeout=60)
        if self._process.is_alive():
            self.errors.append("MLflow writer: did not stop")
            self._process.kill()

    def _at_exit(self) -> None:
        """A program that never called `close` (an exception on the way) must not hang at
        exit: multiprocessing's exit handler waits for the writer, which waits for requests."""
        self.closed = True
        self._halt()
