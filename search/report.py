"""`python -m search.report --study NAME`: what a study has found, as tables, CSV files and plots.

Read-only on the Optuna storage, so it can run while a search is still going. The files go to
--out (default mlruns/reports/NAME/) and are logged under report/ in the study's MLflow run.
`--export-best K FILE.json` also writes the K best configurations, to warm-start another study
(search.study.warmstart).
Exit status: 0 on success, 2 for bad input, 130 when interrupted.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from typing import Any

from search.core.cli import Parser, invoke, positive_int, store_parser
from search.review.report import report

PROG = "search.report"


def build_parser() -> Parser:
    parser = Parser(prog=PROG, parents=[store_parser()],
                    description="Report on a study: leaderboard, loss families, parameter "
                                "importances and plots (read-only; safe during a search).")
    parser.add_argument("--out", default=None, metavar="DIR",
                        help="folder for the report's files (default mlruns/reports/NAME)")
    parser.add_argument("--top", type=positive_int, default=10,
                        help="trials in the leaderboard (default 10)")
    parser.add_argument("--export-best", nargs=2, action=ExportBest, default=None,
                        metavar=("K", "FILE.json"),
                        help="also write the K best configurations (parameters only, best "
                             "first; a multi-objective study's Pareto front) to FILE.json, "
                             "to warm-start another study")
    return parser


class ExportBest(argparse.Action):
    """--export-best K FILE: K checked as --top is (argparse gives both values one type)."""

    def __call__(self, parser: argparse.ArgumentParser, namespace: argparse.Namespace,
                 values: Any, option_string: str | None = None) -> None:
        k, path = values
        try:
            setattr(namespace, self.dest, (positive_int(k), path))
        except argparse.ArgumentTypeError as e:
            raise argparse.ArgumentError(self, str(e)) from None


def main(argv: Sequence[str] | None = None) -> int:
    return invoke(PROG, build_parser(), argv, report)[0]


if __name__ == "__main__":
    sys.exit(main())
