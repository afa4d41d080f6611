"""Driving a search, as `python -m search.run` asks: alone, as one worker of a launcher, or as
the launcher of several workers; what it prints as it ends, and its exit status.

The command (search.run) parses the command line and hands its own `main` down: a worker
forked warm runs that function (search.execution.forked), so nothing here calls the command.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import os
import signal
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from rich.console import Console

    from search.execution.launch import Outcome
    from search.execution.session import Search, SearchOptions
    from search.study.race import RaceSize
    from search.study.race import Result as RaceResult

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


@contextlib.contextmanager
def closed_after(search: Search, warn: Callable[[str], None]) -> Iterator[dict[str, str]]:
    """Run the block, then close `search` with the status its end implies: KILLED when
    interrupted (or when the block sets it, for a launcher stopped by a signal), FAILED when
    the GPU or MLflow failed for good, else FINISHED; `warn` gets each tracking error."""
    from search.core.errors import DeviceFailed, TrackingLost

    state = {"status": "FINISHED"}
    try:
        yield state
    except KeyboardInterrupt:
        state["status"] = "KILLED"
        raise
    except (DeviceFailed, TrackingLost):
        state["status"] = "FAILED"
        raise
    finally:
        for error in search.close(status=state["status"]):
            warn(error)


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

    from search.core.urls import mask_url
    from search.execution.forked import stop_forkserver
    from search.execution.launch import Outcome, launch, physical_gpus, plan_workers
    from search.execution.session import SearchOptions, open_search
    from search.study.display import ProgressDisplay

    options = SearchOptions(**asked)
    size = _race_size(options)
    _interrupt_on_sigterm()
    if worker is not None:
        return _work(timeout=timeout, size=size,
                     options=dataclasses.replace(options, owner=False, worker=worker))
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
    outcome = Outcome()
    started = time.monotonic()
    log_dir = Path("mlruns") / "logs" / name

    def run_workers(target: Search, display: Any, timeout: float | None = None) -> Outcome:
        # A race's workers start again: they get what is left of --timeout (the last
        # occurrence of a flag is the one argparse keeps).
        left = [] if timeout is None else ["--timeout", f"{max(timeout, 0.001):.3f}"]
        return launch(target, [*argv, *left], plans, display, log_dir=log_dir,
                      worker_main=worker_main,
                      warn=lambda line: print(f"warning: {line}", file=sys.stderr))

    race = Race()

    def warn(error: str) -> None:
        console.print(f"warning: {error}", markup=False, highlight=False)

    with closed_after(search, warn) as state:
        with ProgressDisplay(console, budget=search.budget, finished=search.finished,
                             metric=",".join(search.metrics)) as display:
            if many:
                outcome = run_workers(search, display)
            else:
                search.optimize(timeout=timeout, callbacks=[display])
        race.search_seconds = time.monotonic() - started
        if outcome.stopped is None and search.finished >= search.budget:
            outcome = _race(search, size, race, console=console,
                            timeout=time_left(timeout, started),
                            workers=run_workers if many else None) or outcome
        if outcome.stopped is not None:
            state["status"] = "KILLED"
    return _ending(search, outcome, console, started, race)


def _race_size(options: SearchOptions) -> RaceSize | None:
    from search.core.errors import UsageError
    from search.study.race import parse_race

    try:
        return parse_race(options.race)
    except ValueError as e:
        raise UsageError(str(e)) from None


@dataclasses.dataclass
class Race:
    """How the race went, for the ending: its result or why there was none, and the time of
    the search and of the race."""

    result: RaceResult | None = None
    note: str | None = None
    search_seconds: float = 0.0
    seconds: float = 0.0
    runs: int = 0
    stopped_short: bool = False  # queued runs are left: the answer is not known yet


def time_left(timeout: float | None, started: float) -> float | None:
    """What is left of `--timeout` (seconds from `started`, a monotonic time): one deadline
    for the search and its race together, as the flag's user reads it."""
    return None if timeout is None else max(0.0, timeout - (time.monotonic() - started))


def _race(search: Search, size: RaceSize | None, race: Race, *, console: Console,
          timeout: float | None,
          workers: Callable[[Search, Any, float | None], Outcome] | None) -> Outcome | None:
    """The race of a finished single-objective search (search.execution.race): prepared here,
    run here or by the workers, decided and stored. Returns the workers' outcome, if any."""
    from search.execution import race as racing

    race.note = racing.wanted(search, size)
    if race.note is not None or size is None:
        return None
    prepared, race.note = racing.prepare(search, size)
    if prepared is None:
        return None
    outcome = None
    started = time.monotonic()
    if racing.pending(prepared) and (timeout is None or timeout > 0):
        opened = racing.open_race(search, prepared, owner=True)
        chosen = racing.stored_finalists(prepared)
        console.print(f"race: {len(chosen)} finalists ({', '.join(f.label for f in chosen)}) "
                      f"on {prepared.user_attrs.get(racing.RESAMPLINGS)} fresh resamplings of "
                      "train + validation", markup=False, highlight=False)
        display = racing.RaceDisplay(console, search.metrics[0])
        with closed_after(opened, lambda error: console.print(
                f"warning: {error}", markup=False, highlight=False)) as state:
            if workers is not None:
                outcome = workers(opened, display, timeout)
            else:
                opened.optimize(timeout=timeout, callbacks=[display])
            if outcome is not None and outcome.stopped is not None:
                state["status"] = "KILLED"
            if not racing.pending(prepared):
                opened.run_tags.update(racing.tags(racing.decide(search, prepared)))
    race.seconds = time.monotonic() - started
    race.runs = len(prepared.get_trials(deepcopy=False))
    if racing.pending(prepared):
        race.stopped_short = True
        race.note = ("the race stopped short" + (" (--timeout)" if timeout is not None else "")
                     + ": run the same command again to finish it")
        return outcome
    race.result = racing.decide(search, prepared)
    racing.record(search, race.result)
    return outcome


def _ending(search: Search, outcome: Outcome, console: Console, started: float,
            race: Race | None = None) -> int:
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
    if race is not None:
        _race_ending(search, race, console)
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
    return 1 if race is not None and race.stopped_short else 0


def _race_ending(search: Search, race: Race, console: Console) -> None:
    """The race's table, its decision, and its cost beside the search's."""
    from search.execution.race import epochs_trained
    from search.study.race import race_table

    if race.note is not None:
        console.print(race.note, markup=False, highlight=False)
    result = race.result
    if result is None:
        return
    console.print(race_table(result))
    console.print(f"answer: {result.statement}", markup=False, highlight=False)
    searched = epochs_trained(search.study.get_trials(deepcopy=False), search.epochs)
    share = f" ({result.epochs / searched:.0%} of the search's)" if searched else ""
    console.print(f"cost: the search trained {searched} epochs in {race.search_seconds:.0f}s; "
                  f"the race {result.epochs} epochs{share} in {race.seconds:.0f}s",
                  markup=False, highlight=False)


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


def _work(*, timeout: float | None, options: SearchOptions, size: RaceSize | None) -> int:
    """One worker of a launcher: trials until the budget, then the race's queued runs, once
    the launcher has prepared it; the launcher shows the progress."""
    from search.execution import race as racing
    from search.execution.session import open_search

    started = time.monotonic()
    search = open_search(options)

    def warn(error: str) -> None:
        print(f"warning: {error}", file=sys.stderr)

    with closed_after(search, warn):
        search.optimize(timeout=timeout)
        prepared = (racing.find(search) if racing.wanted(search, size) is None
                    and search.finished >= search.budget else None)
        left = time_left(timeout, started)
        if prepared is not None and racing.pending(prepared) and (left is None or left > 0):
            opened = racing.open_race(search, prepared, owner=False)
            with closed_after(opened, warn):
                opened.optimize(timeout=left)
    return 0 if search.finished >= search.budget else 1
