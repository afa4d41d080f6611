"""`python -m search.refit --study NAME [--trial N]`: retrain a trial's config, test it, save it.

The best trial (or trial N) is trained again on train + validation under a refit rule
(`--refit-rule`: by default its epochs and batch size; see search.review.refit.REFIT_RULES),
then evaluated once on the held-out test split, which the search never touched, and on a
shifted test set (common corruptions at fixed severities). Everything goes to one MLflow run,
linked to the trial and nested under the study's run; the model is logged with
`mlflow.pytorch` (uint8 images in, logits out) so that `mlflow.pytorch.load_model` gives it back
and it can be registered.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from search.core.cli import Parser, invoke, positive_int, store_parser, teacher_parser
from search.review.refit import REFIT_RULE, REFIT_RULES, RefitRequest, refit

PROG = "search.refit"


def build_parser() -> Parser:
    parser = Parser(prog=PROG, parents=[store_parser(), teacher_parser()],
                    description="Retrain a trial's config on train + validation and test it.")
    parser.add_argument("--trial", type=int, default=None,
                        help="trial number (default: the race's pick, else the best trial)")
    parser.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    parser.add_argument("--data-dir", default=None, help="as given to search.run")
    parser.add_argument("--weights", default=None, metavar="PATH",
                        help="as given to search.run, for a study started with --weights")
    parser.add_argument("--register", default=None, metavar="MODEL_NAME",
                        help="also register the model in MLflow's model registry")
    parser.add_argument("--per-family", nargs="?", const=True, default=None,
                        type=family_name, metavar="loss|penalty",
                        help="refit the best trial of every loss family (or penalty) with "
                             "--seeds seeds, test each, and compare the families with 95%% "
                             "intervals (default: the family the study balanced, else loss); "
                             "search.report's verdict then rests on these tests")
    parser.add_argument("--seeds", type=positive_int, default=None,
                        help="with --per-family: seeds per family (default 3)")
    parser.add_argument("--refit-rule", choices=REFIT_RULES, default=None,
                        help="how the config trains on train + validation, more images than "
                             "it was chosen on: same epochs and batch size; the same number of "
                             "optimizer steps (fewer epochs); or a batch as much larger, for "
                             f"the same steps an epoch (default: {REFIT_RULE}, the best in "
                             "search.bench --only refit-rule)")
    return parser


def family_name(text: str) -> str:
    """--per-family's value (the bare flag gives True: the study's balance, else loss)."""
    if text not in ("loss", "penalty"):
        raise argparse.ArgumentTypeError(f"must be loss or penalty, got {text!r}")
    return text


def main(argv: Sequence[str] | None = None) -> int:
    status, result = invoke(PROG, build_parser(), argv,
                            lambda **options: refit(RefitRequest(**options)))
    if result is None:  # --help, or an error already told
        return status
    if "families" in result:  # --per-family: search.review.family_refit printed its table
        return 0
    width = max(len(k) for k in result["metrics"])
    print(f"refit of trial {result['trial']} -> MLflow run {result['run_id']}")
    print(f"refit rule {result['refit_rule']}: {result['trained']} on train -> "
          f"{result['refitted']} on train + validation")
    for key, value in sorted(result["metrics"].items()):
        print(f"  {key:<{width}}  {value:.4f}")
    print(f"model: {result['model_uri']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
