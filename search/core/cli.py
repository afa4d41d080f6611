"""Command-line parsing shared by the entry points: parsers composed with `parents=[...]`.

Arguments become keyword arguments once, here; no `args` object travels into the code.
"""

from __future__ import annotations

import argparse
import atexit
import os
import sys
from collections.abc import Callable, Sequence
from typing import Any, NoReturn

from search.core.errors import (
    EXIT_DEVICE_FAILED,
    EXIT_TRACKING_LOST,
    DeviceFailed,
    TrackingLost,
    UsageError,
)


def exit_now(code: int) -> NoReturn:
    """End the process with `code` once its exit handlers have run (the MLflow writer's drain,
    logging's flush) and stdout and stderr are flushed, without the interpreter's teardown.

    Tearing down PyTorch, MLflow and SQLAlchemy's modules took 1.4-1.7 s of a one-worker
    `search.run` here (two-trial digits searches, one run each way), and a launcher waits
    for each worker's. Every file the search writes is closed by then; nothing is left for
    the teardown to do.
    """
    try:
        atexit._run_exitfuncs()
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)


class Parser(argparse.ArgumentParser):
    """An ArgumentParser whose errors are one line on stderr and exit status 2."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message} (see --help)\n")


def invoke(prog: str, parser: argparse.ArgumentParser, argv: Sequence[str] | None,
           command: Callable[..., Any], *, interrupted: str = "interrupted") -> tuple[int, Any]:
    """Parse `argv` and call `command(**options)`: (0, its result), or (status, None).

    The status is argparse's for --help (0) and usage errors (2, already printed); a
    UsageError is one line on stderr and 2; a DeviceFailed (a broken GPU context) one line and
    3; a TrackingLost (MLflow's writer died twice) one line and 4; Ctrl-C prints `interrupted`
    and gives 130.
    """
    try:
        kwargs = vars(parser.parse_args(argv))
    except SystemExit as e:
        return int(e.code or 0), None
    try:
        return 0, command(**kwargs)
    except UsageError as e:
        print(f"{prog}: error: {e}", file=sys.stderr)
        return 2, None
    except DeviceFailed as e:
        print(f"{prog}: error: {e}", file=sys.stderr)
        return EXIT_DEVICE_FAILED, None
    except TrackingLost as e:
        print(f"{prog}: error: {e}", file=sys.stderr)
        return EXIT_TRACKING_LOST, None
    except KeyboardInterrupt:
        print(f"{prog}: {interrupted}", file=sys.stderr)
        return 130, None


def positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {text!r}") from None
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {value}")
    return value


def positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a positive number, got {text!r}") from None
    if not value > 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"must be a positive number, got {text}")
    return value


def non_negative_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a number >= 0, got {text!r}") from None
    if not 0 <= value < float("inf"):
        raise argparse.ArgumentTypeError(f"must be a number >= 0, got {text}")
    return value


class StudyAction(argparse.Action):
    """`--study NAME`; `--study` alone lists the studies known by name, and exits."""

    def __call__(self, parser: argparse.ArgumentParser, namespace: argparse.Namespace,
                 values: Any, option_string: str | None = None) -> None:
        if values is None:
            import spaces

            for name, what in spaces.available():
                print(f"{name:<16} {what}")
            print("or your own: --study path/to/my_study.py (a file that defines STUDY), or "
                  "--study package.module:NAME")
            parser.exit(0)
        setattr(namespace, self.dest, values)


def store_parser() -> argparse.ArgumentParser:
    """The study and where it lives: common to search.run, and later search.report/refit."""
    parser = argparse.ArgumentParser(add_help=False)
    group = parser.add_argument_group("study and stores")
    group.add_argument("--study", required=True, nargs="?", action=StudyAction,
                       help="which study (search space and data): a name such as digits, a "
                            "file my_study.py that defines STUDY, or package.module:NAME; "
                            "alone, lists the studies there are")
    group.add_argument("--name", default=None,
                       help="name of the Optuna study and MLflow experiment (default: the study)")
    # The kinds of storage are search.storage.schemes' list, which core cannot import: the help
    # points at README.md's table, which tests/search_tests/test_storage_schemes.py keeps equal.
    group.add_argument("--storage", default=None,
                       help="Optuna storage: a journal file path (default mlruns/optuna.journal) "
                            "or a storage URL, of a kind README.md lists in 'Where a search "
                            "keeps its record'")
    group.add_argument("--tracking-uri", default=None,
                       help="MLflow tracking URI (default sqlite:///mlruns/mlflow.db, artifacts "
                            "under mlruns/artifacts)")
    return parser


def teacher_parser() -> argparse.ArgumentParser:
    """The teacher of a distilling study: common to search.run and search.refit."""
    parser = argparse.ArgumentParser(add_help=False)
    group = parser.add_argument_group("distillation (adds the distill loss to the space)")
    group.add_argument("--teacher", default=None, metavar="URI|PATH",
                       help="the teacher: an MLflow model URI (runs:/RUN_ID/model, "
                            "models:/NAME/VERSION, as search.refit logs) or a state dict file; "
                            "the study is named <study>-distill unless --name says otherwise")
    group.add_argument("--teacher-arch", default=None, metavar="NAME",
                       help="the model a --teacher state dict belongs to: 'study' (the study's "
                            "own model, e.g. a trial's model/state_dict.pt) or a backbone "
                            "such as resnet50 or timm:NAME")
    return parser
