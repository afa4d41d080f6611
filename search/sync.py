"""`python -m search.sync --study NAME`: rebuild a study's MLflow runs from its Optuna storage.

Optuna's storage is the record of a study; MLflow is a view of it. The sync makes the view whole
again: it fails the trials of dead workers on this host (as a search start does), finds or
rebuilds the study's experiment and parent run, rebuilds the run of every finished trial that
has none (params, per-epoch objective metric, final metrics, state; no artifacts), and ends the
runs still RUNNING whose trial has finished; then the same for the study's race (its runs, under
the race's run, nested under the study's). A second sync changes nothing.

A search calls `sync_study` as it ends, after its writer is flushed. From the command line,
trials that finished less than --settle seconds ago are left alone: a live writer may still be
writing them, as it may a trial still RUNNING in Optuna. A parent run the sync rebuilds ends
FINISHED with the study's trial counts, or stays RUNNING while a trial runs (the search's end,
or the next `search.run` of the study, ends it); a parent found is left as it is.
Exit status: 0 on success, 2 for bad input, 130 when interrupted.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence

from search.core.cli import Parser, invoke, non_negative_float, store_parser
from search.execution.sync import sync

PROG = "search.sync"


def build_parser() -> Parser:
    parser = Parser(prog=PROG, parents=[store_parser()],
                    description="Rebuild a study's MLflow experiment, parent run and trial runs "
                                "from its Optuna storage (safe to repeat; safe during a search).")
    parser.add_argument("--settle", type=non_negative_float, default=30.0, metavar="SECONDS",
                        help="leave trials that finished less than this long ago to their live "
                             "writer (default 30)")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    status, report = invoke(PROG, build_parser(), argv, sync)
    if report is not None:
        for warning in report.warnings:
            print(f"{PROG}: warning: {warning}", file=sys.stderr)
        print(report.line())
        if report.race is not None:
            print(report.race.line())
    return status


if __name__ == "__main__":
    sys.exit(main())
