"""CPU workers forked from one warm process instead of each started cold.

A cold `python -m search.run` worker imports PyTorch, torchvision, MLflow, Optuna and
scikit-learn itself: seconds of start-up per worker on a small machine, and about 490 MB of
private memory (PyTorch's relocated libraries alone are about 280 MB), plus about 200 MB for
its spawned MLflow writer. Forked from a process that has imported them once
(multiprocessing's forkserver, which has no threads, no open storage and no CUDA context of its
own), a worker shares those pages, and so does its writer, forked from it in turn (see
search.tracking.writer). Measured here on the curves study, 8 workers: about 43 MB private a
worker and 42 MB its writer.

Only workers without a GPU are forked. A process must not inherit a CUDA context, and a forked
worker that initialised CUDA in the forkserver by accident would fail on its first kernel; that
cannot be checked on a machine without a GPU, so GPU workers start cold as before (their
trials run minutes, their start-up is small beside them).

The multiprocessing process is wrapped in the subset of `subprocess.Popen` the launcher uses
(pid, poll, wait, send_signal, kill), so both kinds of worker are watched the same way.
"""

from __future__ import annotations

import multiprocessing
import multiprocessing.forkserver
import os
import subprocess
import sys
from collections.abc import Callable, Sequence
from multiprocessing.process import BaseProcess
from pathlib import Path

from search.core import process
from search.core.cli import exit_now

# Imported once in the forkserver: everything a worker imports on its way to its first trial,
# then frozen for the garbage collector (see search.execution.preload).
PRELOAD = ["search.execution.preload"]

class ForkedProcess:
    """A forked worker seen as `subprocess.Popen`: its exit status is negative when a signal
    ended it, as Popen's is."""

    def __init__(self, main: Callable[[Sequence[str]], int], argv: Sequence[str],
                 env: dict[str, str], log: Path) -> None:
        context = multiprocessing.get_context("forkserver")
        context.set_forkserver_preload(PRELOAD)
        self._process: BaseProcess = context.Process(  # type: ignore[attr-defined]
            target=_main, args=(main, list(argv), dict(env), str(log)), name="search-worker")
        self._process.start()

    @property
    def pid(self) -> int:
        assert self._process.pid is not None
        return self._process.pid

    @property
    def returncode(self) -> int | None:
        return self._process.exitcode

    def poll(self) -> int | None:
        return self._process.exitcode  # reads the status if it ended; never blocks

    def wait(self, timeout: float | None = None) -> int:
        self._process.join(timeout)
        if self._process.exitcode is None:
            raise subprocess.TimeoutExpired("search.run worker", timeout or 0.0)
        return self._process.exitcode

    def send_signal(self, signum: int) -> None:
        if self._process.exitcode is None:
            os.kill(self.pid, signum)

    def kill(self) -> None:
        self._process.kill()


def warm_up() -> None:
    """Start the forkserver now: it imports PRELOAD while this process goes on (Python's
    `ensure_running` does not wait for it); the first worker forked waits for the rest."""
    multiprocessing.get_context("forkserver").set_forkserver_preload(PRELOAD)
    multiprocessing.forkserver.ensure_running()  # type: ignore[attr-defined]


def stop_forkserver() -> None:
    """Stop this process's forkserver, once the workers forked from it have ended (it would
    otherwise end with this process). Python has no public call for it: multiprocessing's own
    tests use this one."""
    server = getattr(multiprocessing.forkserver, "_forkserver", None)  # type: ignore[attr-defined]
    stop = getattr(server, "_stop", None)
    if stop is not None:
        stop()


def _main(main: Callable[[Sequence[str]], int], argv: list[str], env: dict[str, str],
          log: str) -> None:
    """In the forked worker: the environment and output a started `search.run` would have,
    then `main` (the command's main, handed down by it) with `argv`; exits with its status
    (running the exit handlers, which drain the MLflow writer, as a normal interpreter exit
    does)."""
    process.IN_WORKER = True
    os.environ.clear()
    os.environ.update(env)
    fd = os.open(log, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    os.dup2(fd, 1)
    os.dup2(fd, 2)
    os.close(fd)
    sys.stdout = open(1, "w", buffering=1, closefd=False)  # noqa: SIM115 (the process's own)
    sys.stderr = open(2, "w", buffering=1, closefd=False)  # noqa: SIM115
    code = 1
    try:
        import torch

        # The forkserver's OpenMP read OMP_NUM_THREADS when it loaded, with the launcher's
        # environment: the worker's own share is set here.
        threads = env.get("OMP_NUM_THREADS")
        if threads:
            torch.set_num_threads(int(threads))
        code = main(argv)
    except SystemExit as e:
        code = e.code if isinstance(e.code, int) else 1
    except BaseException:  # printed to the log, as an uncaught error of search.run would be
        import traceback

        traceback.print_exc()
    finally:
        exit_now(code)  # search.run's status, as the launcher reads a cold worker's
