"""`python -m search.run --study NAME`: run (or resume) a study's search, tracked in MLflow.

Exit status: 0 when the study has its budget of finished trials, 1 when it stopped short (a
timeout or too many failures: run the same command again to go on), 2 for bad input, 130 when
interrupted.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Sequence
from typing import Any

from search.cli import Parser, positive_float, positive_int, store_parser
from search.errors import UsageError

PROG = "search.run"


def build_parser() -> Parser:
    from search.study import PRUNERS, SAMPLERS

    parser = Parser(prog=PROG, parents=[store_parser()],
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
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    try:
        kwargs = vars(build_parser().parse_args(argv))
    except SystemExit as e:  # --help (0) or a usage error (2), already printed
        return int(e.code or 0)
    try:
        return run(**kwargs)
    except UsageError as e:
        print(f"{PROG}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"{PROG}: interrupted; run the same command again to finish the study",
              file=sys.stderr)
        return 130


def run(*, timeout: float | None = None, **options: Any) -> int:
    """Run or resume a search; `options` are open_search's. Returns the exit status."""
    from rich.console import Console

    from search.display import ProgressDisplay, leaderboard, state_summary
    from search.session import open_search
    from search.stores import ui_command
    from search.urls import mask_url

    search = open_search(**options)
    # Logs and CI have no terminal: keep table rows whole rather than 80 columns wide.
    console = Console(width=None if sys.stdout.isatty() else 160)
    name = search.study.study_name
    console.print(f"study {name!r}: {search.finished} of {search.budget} trials finished; "
                  f"storage {mask_url(search.stores.storage)}, tracking "
                  f"{mask_url(search.stores.tracking_uri)}", markup=False, highlight=False)
    status = "FINISHED"
    started = time.monotonic()
    try:
        with ProgressDisplay(console, budget=search.budget, finished=search.finished,
                             metric=search.spec.metric) as display:
            search.optimize(timeout=timeout, callbacks=[display])
    except KeyboardInterrupt:
        status = "KILLED"
        raise
    finally:
        for error in search.close(status=status):
            console.print(f"warning: {error}", markup=False, highlight=False)
    finished = search.finished
    console.print(leaderboard(search.study, metric=search.spec.metric))
    console.print(f"{state_summary(search.study)}; {finished} of {search.budget} finished in "
                  f"{time.monotonic() - started:.0f}s", markup=False, highlight=False)
    console.print(f"review: {ui_command(search.stores.tracking_uri)}", markup=False,
                  highlight=False)
    if finished < search.budget:
        console.print(f"the study stopped short of its budget ({finished} of {search.budget}); "
                      "run the same command again to go on", markup=False, highlight=False)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
