"""`python -m search.run --study NAME`: run (or resume) a study's search, tracked in MLflow.

Exit status: 0 when the study has its budget of finished trials and its race (if any) is
decided, 1 when either stopped short (a timeout or too many failures: run the same command again
to go on), 2 for bad input, 3 when the
GPU failed for good, 4 when MLflow tracking was lost (its writer died twice; `search.sync`
rebuilds the runs from Optuna's record), 130 when interrupted.
"""

from __future__ import annotations

import argparse
import functools
import sys
from collections.abc import Sequence

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
from search.execution import driver

PROG = "search.run"


def build_parser() -> Parser:
    from search.study.optuna_study import PRUNERS, SAMPLERS

    parser = Parser(prog=PROG, parents=[store_parser(), teacher_parser()],
                    description="Search losses and fine-tuning hyperparameters for a study.")
    parser.add_argument("--trials", type=positive_int, default=None,
                        help="budget of finished (complete or pruned) trials for the whole study; "
                             "default: the study's")
    parser.add_argument("--timeout", type=positive_float, default=None,
                        help="stop starting new trials, or race runs, after this many seconds: "
                             "one deadline for the search and its race")
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
    group = parser.add_argument_group("the answer: recipes first, a race of the finalists last")
    group.add_argument("--recipes", default=None, metavar="none|NAME,...",
                       help="the study's standard recipes to run as its first trials (default: "
                            "all it declares; none: no recipe)")
    group.add_argument("--recipe", dest="recipe_files", action="append", default=[],
                       metavar="FILE.json",
                       help="a recipe of your own: a JSON object of parameters, or an object of "
                            "named ones (repeatable); run first, raced as the study's own")
    group.add_argument("--race", type=race_text, default=None, metavar="K,R|none",
                       help="end the search by retraining the K best configurations and the "
                            "best recipe on R fresh resamplings of train + validation, and pick "
                            "by the mean (default 2,3; none: the best trial is the answer)")
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


def race_text(text: str) -> str:
    from search.study.race import parse_race

    try:
        parse_race(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None
    return text


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
    status, code = invoke(PROG, build_parser(), argv,
                          functools.partial(driver.run, argv=argv, worker_main=main),
                          interrupted="interrupted; run the same command again to finish the "
                                      "study")
    return status if code is None else int(code)


if __name__ == "__main__":
    exit_now(main())
