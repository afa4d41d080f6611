"""`python -m search.run --study NAME`: run (or resume) a study's search, tracked in MLflow.

Exit status: 0 when the study has its budget of finished trials, 1 when it stopped short (a
timeout or too many failures: run the same command again to go on), 2 for bad input, 3 when the
GPU failed for good, 4 when MLflow tracking was lost (its writer died twice; `search.sync`
rebuilds the runs from Optuna's record), 130 when interrupted.
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import os
import signal
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from search.core.cli import (
    Parser,
    exit_now,
    invoke,
    non_negative_float,
    positive_float,
    positive_int,
    store_parser,
    teacher_parser,
)

if TYPE_CHECKING:
    from search.execution.session import SearchOptions

PROG = "search.run"


def build_parser() -> Parser:
    from search.study.optuna_study import PRUNERS, SAMPLERS

    parser = Parser(prog=PROG, parents=[store_parser(), teacher_parser()],
                    description="Search losses and fine-tuning hyperparameters for a study.")
    parser.add_argument("--trials", type=positive_int, default=None,
                        help="budget of finished (complete or pruned) trials for the whole study; "
                             "default: the study's")
    parser.add_argument("--timeout", type=positive_float, default=None,
                        help="stop starting new trials after this many seconds")
    parser.add_argument("--epochs", type=positive_int, default=None,
                        help="epochs per trial (default: the study's); fixed for a study's life")
    parser.add_argument("--sampler", choices=tuple(SAMPLERS), default="tpe")
    parser.add_argument("--pruner", choices=PRUNERS, default="hyperband")
    parser.add_argument("--seed", type=int, default=None,
                        help="seeds the sampler, the data split and training (default: the "
                             "study's)")
    parser.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto",
                        help="where trials train; auto picks CUDA when present")
    parser.add_argument("--objectives", type=objective_list, default=None,
                        help="several validation metrics at once, e.g. accuracy,ece: a "
                             "multi-objective study (not pruned; search.report shows its "
                             "Pareto front); names: accuracy, ece, cross_entropy, f1")
    group = parser.add_argument_group(
        "narrowing the space (stored with the study: a resume keeps it)")
    group.add_argument("--fix", type=assignment, action="append", default=[],
                       metavar="NAME=VALUE",
                       help="hold a parameter of the space at one value, e.g. loss=focal or "
                            "lr=0.01 (repeatable); it is still logged with every trial")
    group.add_argument("--choices", type=assignment, action="append", default=[],
                       metavar="NAME=A,B",
                       help="search a categorical parameter over some of its choices, e.g. "
                            "optimizer=adamw,sgd (repeatable)")
    group.add_argument("--grid", type=assignment, action="append", default=[],
                       metavar="NAME=A,B",
                       help="with --sampler grid: the values of a parameter to run every "
                            "combination of (repeatable); the rest come from --fix or the "
                            "study's defaults; the budget is the number of points")
    group.add_argument("--balance", choices=("loss", "penalty"), default=None,
                       help="give every loss (or penalty) family the same number of trials, "
                            "pruned within its family as well as across, so that families "
                            "are compared on equal budgets (the budget is rounded up to a "
                            "multiple of the families)")
    group = parser.add_argument_group("warm starts (configurations tried first)")
    group.add_argument("--enqueue-from", default=None, metavar="STUDY[:K]",
                       help="try first the K best configurations (default 5) of another study, "
                            "keeping the parameters this space has")
    group.add_argument("--enqueue-storage", default=None, metavar="URL",
                       help="the storage of --enqueue-from's study (default: this study's)")
    group.add_argument("--enqueue", default=None, metavar="FILE.json",
                       help="try first the configurations in a JSON file (a list of parameter "
                            "objects, as search.report --export-best writes)")
    group = parser.add_argument_group("workers (Optuna's distributed model: one storage)")
    group.add_argument("--workers", type=positive_int, default=None,
                       help="worker processes on this node (default: one per GPU and "
                            "--trials-per-gpu, or 1 on a CPU)")
    group.add_argument("--gpus", type=gpu_list, default=None,
                       help="GPUs to use, e.g. 0,1 (default: every visible GPU)")
    group.add_argument("--trials-per-gpu", type=positive_int, default=1,
                       help="workers sharing each GPU (small trials pack well)")
    group.add_argument("--heartbeat", type=positive_int, default=30,
                       help="seconds between a running trial's heartbeats (every storage); "
                            "a trial silent for twice that, its node dead, is failed and "
                            "retried by any other worker (default 30)")
    group.add_argument("--checkpoint-every", type=non_negative_float, default=30.0,
                       metavar="SECONDS",
                       help="save a running trial's state at most this often (default 30; 0 = "
                            "every epoch), so that a lost trial's retry resumes from it")
    parser.add_argument("--worker", type=int, default=None, help=argparse.SUPPRESS)
    parser.add_argument("--time-scale", type=non_negative_float, default=None, metavar="FACTOR",
                        help="a simulating study (curves): seconds slept per simulated second "
                             "of an epoch (default 0.01; 0 = no sleep)")
    parser.add_argument("--compile", action="store_true",
                        help="run models through torch.compile (pays off on long GPU trials)")
    group = parser.add_argument_group(
        "data and model (image studies such as cifar10)")
    group.add_argument("--data-dir", default=None,
                       help="data directory: downloads go there (default ./data); for "
                            "imagefolder, the folder with one subfolder per class")
    group.add_argument("--backbone", default=None,
                       help="torchvision backbone: resnet18 (default), resnet34, resnet50, "
                            "mobilenet_v3_small, mobilenet_v3_large, efficientnet_b0, "
                            "convnext_tiny; or timm:NAME, a timm CNN such as timm:resnet50 "
                            "(pip install 'finetune-search[timm]')")
    group.add_argument("--weights", default=None, metavar="PATH",
                       help="the backbone's weights from a local state dict file instead of "
                            "the pretrained download (torchvision's or timm's)")
    group.add_argument("--no-pretrained", dest="pretrained", action="store_false",
                       help="start the backbone from random weights")
    group.add_argument("--resolution", type=resolution, default=None,
                       help="image side the model sees (images are resized on the device), or "
                            "'search' to search it (default: the study's)")
    return parser


def objective_list(text: str) -> list[str]:
    from search.study.optuna_study import OBJECTIVES

    names = [n.strip() for n in text.split(",") if n.strip()]
    if not names or any(n not in OBJECTIVES for n in names) or len(set(names)) != len(names):
        raise argparse.ArgumentTypeError(
            f"must be distinct names among {', '.join(OBJECTIVES)}, got {text!r}")
    return names


def assignment(text: str) -> tuple[str, str]:
    from search.study.narrowing import parse_assignment

    try:
        return parse_assignment(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def gpu_list(text: str) -> list[str]:
    parts = [p.strip() for p in text.split(",")]
    if not all(p.isdigit() for p in parts):
        raise argparse.ArgumentTypeError(f"must be GPU indices such as 0,1, got {text!r}")
    return parts


def resolution(text: str) -> int | str:
    if text == "search":
        return text
    value = positive_int(text)
    if value < 8:
        raise argparse.ArgumentTypeError(f"must be 'search' or at least 8 pixels, got {value}")
    return value


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    status, code = invoke(PROG, build_parser(), argv, functools.partial(run, argv=argv),
                          interrupted="interrupted; run the same command again to finish the "
                                      "study")
    return status if code is None else int(code)


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
        **asked: Any) -> int:
    """Run or resume a search; `asked`: the command line's options of the search itself, made
    into a SearchOptions record here. Returns the exit status."""
    call = functools.partial(_run, argv=argv, timeout=timeout, workers=workers, gpus=gpus,
                             trials_per_gpu=trials_per_gpu, worker=worker, **asked)
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
         gpus: list[str] | None, trials_per_gpu: int, worker: int | None, **asked: Any) -> int:
    from rich.console import Console

    from search.core.errors import EXIT_TRACKING_LOST, DeviceFailed, TrackingLost
    from search.core.urls import mask_url
    from search.execution.forked import stop_forkserver
    from search.execution.launch import Outcome, launch, physical_gpus, plan_workers
    from search.execution.session import SearchOptions, open_search
    from search.storage.stores import ui_command
    from search.study.display import ProgressDisplay, leaderboard, state_summary

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


if __name__ == "__main__":
    exit_now(main())
