"""Driving a search, as `python -m search.run` asks: alone, as one worker of a launcher, or as
the launcher of several workers; what it prints as it ends, and its exit status.

The command (search.run) parses the command line and hands its own `main` down: a worker
forked warm runs that function (search.execution.forked), so nothing here calls the command.
"""

from __future__ import annotations

import dataclasses
import functools
import os
import signal
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from rich.console import Console

    from search.execution.launch import Outcome
    from search.execution.session import Search, SearchOptions

PROG = "search.run"  # the command a search is driven by, in what it prints

WorkerMain = Callable[[Sequence[str]], int]  # a worker's main: its command line in, status out


def _interrupt_on_sigterm() -> None:
    """SIGTERM (a preempted job, a launcher stopping its workers) acts as Ctrl-C does: the
    running trial is interrupted, checkpointed and queued for retry, its runs are ended. The
    stop stays asked: if Python loses the KeyboardInterrupt, the search raises it again before
    the next epoch or trial (objectives.interrupts)."""
    from objectives.interrupts import clear_stop, request_stop

    def handler(signum: int, frame: object) -> None:
        request_stop()
        raise KeyboardInterrupt

    clear_stop()
    signal.signal(signal.SIGTERM, handler)


def run(*, argv: Sequence[str] = (), timeout: float | None = None, workers: int | None = None,
        gpus: list[str] | None = None, trials_per_gpu: int = 1, worker: int | None = None,
        worker_main: WorkerMain | None = None, **asked: Any) -> int:
    """Run or resume a search; `asked`: the command line's options of the search itself, made
    into a SearchOptions record here; `worker_main`: what a worker forked warm runs with its
    command line (the command's own main; without it, workers start cold). Returns the exit
    status."""
    call = functools.partial(_run, argv=argv, timeout=timeout, workers=workers, gpus=gpus,
                             trials_per_gpu=trials_per_gpu, worker=worker,
                             worker_main=worker_main, **asked)
    if worker is not None or not workers or workers < 2:
        return call()
    from search.execution.forked import stop_forkserver, warm_up

    # The forkserver's imports (seconds) run beside this launcher's own: its imports, opening
    # the study, loading the data. Its CPU workers are forked from it (search.execution.forked).
    warm_up()
    try:
        return call()
    finally:
        stop_forkserver()


def _run(*, argv: Sequence[str], timeout: float | None, workers: int | None,
         gpus: list[str] | None, trials_per_gpu: int, worker: int | None,
         worker_main: WorkerMain | None, **asked: Any) -> int:
    from rich.console import Console

    from search.core.errors import DeviceFailed, TrackingLost
    from search.core.urls import mask_url
    from search.execution.forked import stop_forkserver
    from search.execution.launch import Outcome, launch, physical_gpus, plan_workers
    from search.execution.session import SearchOptions, open_search
    from search.study.display import ProgressDisplay

    options = SearchOptions(**asked)
    _interrupt_on_sigterm()
    if worker is not None:
        return _work(timeout=timeout, options=dataclasses.replace(options, owner=False,
                                                                  worker=worker))
    gpus = choose_gpus(gpus, device=options.device)
    plans = plan_workers(workers=workers, gpus=gpus, trials_per_gpu=trials_per_gpu)
    many = len(plans) > 1
    if all(plan.get("CUDA_VISIBLE_DEVICES") for plan in plans):
        stop_forkserver()  # GPU workers start cold: nothing to fork
    if gpus and not many:
        # Before anything starts CUDA (which reads the variable once): this process alone.
        os.environ["CUDA_VISIBLE_DEVICES"] = physical_gpus(gpus)[0]
    search = open_search(dataclasses.replace(options, load_device="cpu" if many else None))
    for note in search.notes:
        print(note)
    # Logs and CI have no terminal: keep table rows whole rather than 80 columns wide.
    console = Console(width=None if sys.stdout.isatty() else 160)
    name = search.study.study_name
    console.print(f"study {name!r}: {search.finished} of {search.budget} trials finished; "
                  f"storage {mask_url(search.stores.storage)}, tracking "
                  f"{mask_url(search.stores.tracking_uri)}"
                  + (f"; {len(plans)} workers" if many else ""), markup=False, highlight=False)
    status, outcome = "FINISHED", Outcome()
    started = time.monotonic()
    try:
        with ProgressDisplay(console, budget=search.budget, finished=search.finished,
                             metric=",".join(search.metrics)) as display:
            if many:
                log_dir = Path("mlruns") / "logs" / name
                outcome = launch(search, argv, plans, display, log_dir=log_dir,
                                 worker_main=worker_main,
                                 warn=lambda line: print(f"warning: {line}", file=sys.stderr))
            else:
                search.optimize(timeout=timeout, callbacks=[display])
    except KeyboardInterrupt:
        status = "KILLED"
        raise
    except (DeviceFailed, TrackingLost):
        status = "FAILED"
        raise
    finally:
        if outcome.stopped is not None:
            status = "KILLED"
        for error in search.close(status=status):
            console.print(f"warning: {error}", markup=False, highlight=False)
    return _ending(search, outcome, console, started)


def _ending(search: Search, outcome: Outcome, console: Console, started: float) -> int:
    """What a search prints as it ends (the leaderboard, the states, how to review it, what
    went wrong), and its exit status."""
    from search.core.errors import EXIT_TRACKING_LOST
    from search.storage.stores import ui_command
    from search.study.display import leaderboard, state_summary

    name = search.study.study_name
    finished = search.finished
    console.print(leaderboard(search.study, metric=",".join(search.metrics)))
    console.print(f"{state_summary(search.study)}; {finished} of {search.budget} finished in "
                  f"{time.monotonic() - started:.0f}s", markup=False, highlight=False)
    review = ui_command(search.stores.tracking_uri, search.tracker.experiment_id)
    console.print(f"review: {review}", markup=False, highlight=False)
    if outcome.stopped is not None:
        print(f"{PROG}: stopped by {signal.Signals(outcome.stopped).name}; run the same "
              "command again to finish the study", file=sys.stderr)
        return 128 + outcome.stopped
    for line in outcome.bad_input or ():
        print(f"{PROG}: error: {line}", file=sys.stderr)
    for line in outcome.untracked or ():
        print(f"{PROG}: error: {line}", file=sys.stderr)
    if search.untracked != 0:
        print(f"{PROG}: error: MLflow could not be checked against Optuna's record as the search "
              f"ended (see the warning above): run python -m search.sync --study {name} once "
              f"the tracking store answers", file=sys.stderr)
    if outcome.untracked or search.untracked != 0:
        return EXIT_TRACKING_LOST
    if finished < search.budget and outcome.bad_input:
        return 2
    if finished < search.budget:
        console.print(f"the study stopped short of its budget ({finished} of {search.budget}); "
                      "run the same command again to go on", markup=False, highlight=False)
        return 1
    return 0


def choose_gpus(gpus: list[str] | None, *, device: str) -> list[str] | None:
    """The GPUs to spread the workers over (indices as this process sees them), or None for
    the CPU: every visible GPU unless `--gpus` says which; an index out of range is bad input."""
    from search.core.errors import UsageError
    from search.core.runtime import visible_gpus

    if device == "cpu":
        if gpus:
            raise UsageError("--gpus does not apply with --device cpu: leave one of them out")
        return None
    visible = visible_gpus()
    if gpus is None:
        return visible or None
    wrong = [g for g in gpus if int(g) >= len(visible)]
    if wrong:
        seen = (f"the {len(visible)} visible GPU(s) are 0-{len(visible) - 1}" if visible
                else "no CUDA device is visible")
        raise UsageError(f"--gpus {','.join(gpus)}: GPU {wrong[0]} does not exist ({seen}); "
                         "give indices of visible GPUs, or leave --gpus out to use them all")
    return gpus


def _work(*, timeout: float | None, options: SearchOptions) -> int:
    """One worker of a launcher: trials until the budget; the launcher shows the progress."""
    from search.core.errors import DeviceFailed, TrackingLost
    from search.execution.session import open_search

    search = open_search(options)
    status = "FINISHED"
    try:
        search.optimize(timeout=timeout)
    except KeyboardInterrupt:
        status = "KILLED"
        raise
    except (DeviceFailed, TrackingLost):
        status = "FAILED"
        raise
    finally:
        for error in search.close(status=status):
            print(f"warning: {error}", file=sys.stderr)
    return 0 if search.finished >= search.budget else 1
