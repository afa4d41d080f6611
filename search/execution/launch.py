"""Several workers on one node: each is `search.run` on the same study and storage.

Optuna's own distributed model, nothing home-made: every worker runs `study.optimize` against
the shared storage and the study's budget; the launcher only starts them (pinned to a GPU with
CUDA_VISIBLE_DEVICES, or with a share of the CPU's threads; CPU workers are forked from a warm
process, see search.execution.forked), shows their combined progress from
the storage, and watches them. A worker that dies mid-trial is seen here first (its exit status):
its RUNNING trials are failed as "worker lost" and retried (see search.execution.recovery), and a
replacement worker is started. SIGTERM or Ctrl-C is passed on to the workers, which interrupt
their trials and checkpoint them; past a grace period, they are killed and their trials failed.
"""

from __future__ import annotations

import functools
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

from optuna.trial import TrialState

from search.core.errors import EXIT_DEVICE_FAILED, EXIT_TRACKING_LOST
from search.core.runtime import MEMORY_FRACTION_ENV
from search.execution import recovery
from search.execution.forked import ForkedProcess, stop_forkserver
from search.execution.session import Search
from search.storage import optuna_storage
from search.study.display import ProgressDisplay

T = TypeVar("T")

POLL_SECONDS = 0.5
STALE_CHECK_SECONDS = 5.0  # how often the launcher looks for trials whose worker stopped beating
STOP_GRACE_SECONDS = 60.0  # after SIGTERM, the time workers get to checkpoint and stop
DONE = (TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL)
EXIT_BAD_INPUT = 2
MEMORY_SHARE = 0.95  # of a GPU's memory, split between the workers on it (the rest: the driver)


@dataclass
class Worker:
    index: int
    env: dict[str, str]
    log: Path
    process: subprocess.Popen[bytes] | ForkedProcess | None = None
    handled: bool = False  # its exit has been dealt with (and it was not replaced)
    main: Callable[[Sequence[str]], int] | None = None  # what a forked worker runs

    def start(self, argv: Sequence[str]) -> None:
        self.log.parent.mkdir(parents=True, exist_ok=True)
        if self.main is not None and not self.env.get("CUDA_VISIBLE_DEVICES"):
            # a CPU worker: forked warm
            self.process = ForkedProcess(self.main, [*argv, "--worker", str(self.index)],
                                         self.env, self.log)
            return
        with open(self.log, "ab") as log:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "search.run", *argv, "--worker", str(self.index)],
                env=self.env, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            )

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    def error_line(self) -> str | None:
        """The one-line error the worker ended with (search.run's `error:` line), if any."""
        try:
            lines = self.log.read_text(errors="replace").splitlines()
        except OSError:
            return None
        return next((line for line in reversed(lines) if line.startswith("search.run: ")), None)


def physical_gpus(gpus: Sequence[str]) -> list[str]:
    """GPU indices as this process counts them (within its own CUDA_VISIBLE_DEVICES), as
    the ids a child's CUDA_VISIBLE_DEVICES needs: under CUDA_VISIBLE_DEVICES=4,5, GPU 1 is 5."""
    visible = [v.strip() for v in os.environ.get("CUDA_VISIBLE_DEVICES", "").split(",")
               if v.strip()]
    return [visible[int(g)] if visible and int(g) < len(visible) else g for g in gpus]


def plan_workers(*, workers: int | None, gpus: Sequence[str] | None,
                 trials_per_gpu: int) -> list[dict[str, str]]:
    """Each worker's extra environment: its GPU, or its share of the CPU's threads.

    Workers go round-robin over `gpus`; the workers sharing one GPU each get an equal share of
    its memory (MEMORY_FRACTION_ENV), so that a trial too large for its share runs out of
    memory in its own process instead of in a neighbour's.
    """
    if gpus:
        ids = physical_gpus(gpus)
        count = workers or len(ids) * trials_per_gpu
        plans = [{"CUDA_VISIBLE_DEVICES": ids[i % len(ids)]} for i in range(count)]
        for plan in plans:
            sharing = sum(p["CUDA_VISIBLE_DEVICES"] == plan["CUDA_VISIBLE_DEVICES"]
                          for p in plans)
            if sharing > 1:
                plan[MEMORY_FRACTION_ENV] = f"{MEMORY_SHARE / sharing:.4f}"
        return plans
    count = workers or 1
    threads = max(1, (os.cpu_count() or 1) // count)
    return [{"OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads),
             "CUDA_VISIBLE_DEVICES": ""} for _ in range(count)]


class Stop(Exception):
    def __init__(self, signum: int) -> None:
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


@dataclass
class Outcome:
    stopped: int | None = None  # the signal that stopped the launcher
    bad_input: list[str] | None = None  # the error lines of workers that exited with 2
    untracked: list[str] | None = None  # those of workers whose MLflow writer died twice


def launch(search: Search, argv: Sequence[str], plans: list[dict[str, str]],
           display: ProgressDisplay, *, log_dir: Path,
           worker_main: Callable[[Sequence[str]], int] | None = None,
           warn: Callable[[str], None] = print) -> Outcome:
    """Run the workers until the study has its budget or they stop.

    A CPU worker is forked warm and runs `worker_main` (the command's main) with its command
    line; without one, or on a GPU, a worker starts cold as `python -m search.run`.

    A worker that dies, or stops because its GPU failed (a sticky CUDA error), is replaced;
    one that exits on bad input, or because its MLflow tracking was lost, is not, and its
    error line is returned. `warn` shows what
    happened to a worker, as it happens.
    """
    workers = [Worker(i, {**os.environ, **plan}, log_dir / f"worker-{i}.log", main=worker_main)
               for i, plan in enumerate(plans)]
    outcome = Outcome(bad_input=[], untracked=[])
    seen = {t.number for t in search.study.get_trials(deepcopy=False, states=DONE)}
    respawns = 3 * len(workers)
    next_stale_check = 0.0

    asked: list[int] = []

    def on_signal(signum: int, _frame: object) -> None:
        asked.append(signum)
        raise Stop(signum)

    previous = {s: signal.signal(s, on_signal) for s in (signal.SIGTERM, signal.SIGINT)}
    try:
        for worker in workers:
            worker.start(argv)
        while any(w.process is not None and w.process.poll() is None for w in workers):
            time.sleep(POLL_SECONDS)
            if asked:  # raised where it was lost: a Stop is an Exception, which code may catch
                raise Stop(asked[0])
            for worker in workers:
                assert worker.process is not None
                code = worker.process.poll()
                if code is None or code == 0 or worker.handled:
                    continue
                worker.handled = True  # unless it is replaced below
                lost = _unless_storage_down(functools.partial(_fail_trials_of, search, [worker]))
                killed = code < 0  # by a signal: an OOM killer, a preemption, a SIGKILL
                line = worker.error_line() or f"exit status {code}"
                if code == EXIT_BAD_INPUT:
                    assert outcome.bad_input is not None
                    outcome.bad_input.append(f"worker {worker.index}: {line}")
                    continue
                if code == EXIT_TRACKING_LOST:
                    assert outcome.untracked is not None
                    outcome.untracked.append(f"worker {worker.index}: {line}")
                    warn(f"worker {worker.index} stopped: {line}")
                    continue
                if code == EXIT_DEVICE_FAILED:
                    warn(f"worker {worker.index} stopped: {line}")
                if ((lost or killed or code == EXIT_DEVICE_FAILED) and respawns > 0
                        and search.finished < search.budget):
                    respawns -= 1
                    worker.handled = False
                    worker.start(argv)  # a replacement takes its place (and the retries)
            _unless_storage_down(lambda: _show_new(search, display, seen))
            if time.monotonic() >= next_stale_check:  # another node's lost trials, too
                _unless_storage_down(functools.partial(recovery.fail_stale_trials,
                                                       search.study))
                next_stale_check = time.monotonic() + STALE_CHECK_SECONDS
        _show_new(search, display, seen)
        return outcome
    except Stop as stop:
        _stop(workers, search)
        _show_new(search, display, seen)
        outcome.stopped = stop.signum
        return outcome
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
        if any(isinstance(w.process, ForkedProcess) for w in workers):
            stop_forkserver()


def _unless_storage_down(read: Callable[[], T]) -> T | None:
    """`read()`, or None while the storage does not answer (a database restarting, say).

    The launcher only watches; its workers reconnect on their own (pool_pre_ping), so a
    failed look at the study is skipped and the next poll looks again.
    """
    try:
        return read()
    except Exception as e:
        if optuna_storage.unavailable(e):
            return None
        raise


def _fail_trials_of(search: Search, workers: Sequence[Worker], *,
                    reason: str = recovery.LOST) -> list[int]:
    ids = {recovery.worker_id(w.pid) for w in workers if w.process is not None}
    return recovery.fail_lost_trials(search.study, lost=ids.__contains__,
                                     on_lost=search.end_lost_run, reason=reason)


def _stop(workers: Sequence[Worker], search: Search) -> None:
    """SIGTERM every worker; kill what still runs after the grace period; fail its trials."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # a second Ctrl-C must not cut this short
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    live = [w for w in workers if w.process is not None and w.process.poll() is None]
    for worker in live:
        worker.process.send_signal(signal.SIGTERM)  # type: ignore[union-attr]
    deadline = time.monotonic() + STOP_GRACE_SECONDS
    for worker in live:
        try:
            worker.process.wait(max(0.0, deadline - time.monotonic()))  # type: ignore[union-attr]
        except subprocess.TimeoutExpired:
            worker.process.kill()  # type: ignore[union-attr]
            worker.process.wait()  # type: ignore[union-attr]
    # What a stopped worker left RUNNING (it was stopped between two steps of Optuna's own
    # bookkeeping, or did not stop in time) was interrupted by this stop, not lost.
    _fail_trials_of(search, workers, reason=recovery.INTERRUPTED)


def _show_new(search: Search, display: ProgressDisplay, seen: set[int]) -> None:
    for trial in search.study.get_trials(deepcopy=False, states=DONE):
        if trial.number not in seen:
            seen.add(trial.number)
            display(search.study, trial)
