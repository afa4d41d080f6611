"""`python -m search.run --study NAME`: run (or resume) a study's search, tracked in MLflow.

Exit status: 0 when the study has its budget of finished trials, 1 when it stopped short (a
timeout or too many failures: run the same command again to go on), 2 for bad input, 130 when
interrupted.
"""

from __future__ import annotations

import logging
import sys
import time
import warnings
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


def _quiet_libraries() -> None:
    import optuna

    # Our own one line per trial replaces Optuna's; failures are reported with their reason.
    optuna.logging.set_verbosity(optuna.logging.ERROR)
    for name in ("mlflow", "alembic", "sqlalchemy"):
        logging.getLogger(name).setLevel(logging.WARNING)
    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)


def _device(name: str) -> str:
    import torch

    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda" and not torch.cuda.is_available():
        raise UsageError("--device cuda but no CUDA device is visible: use --device cpu")
    return name


def run(
    *, study: str, name: str | None = None, storage: str | None = None,
    tracking_uri: str | None = None, trials: int | None = None, timeout: float | None = None,
    epochs: int | None = None, sampler: str = "tpe", pruner: str = "hyperband",
    seed: int | None = None, device: str = "auto",
) -> int:
    from rich.console import Console

    import spaces
    from search import stores as stores_module
    from search.display import ProgressDisplay, leaderboard, state_summary
    from search.storage import open_storage
    from search.study import FINISHED, finished_count, make_pruner, make_sampler, open_study
    from search.tracking import Tracker
    from search.trial import TrialRunner
    from search.urls import mask_text, mask_url

    try:
        spec = spaces.get_study(study)
    except ValueError as e:
        raise UsageError(str(e)) from None
    _quiet_libraries()
    device = _device(device)
    name = name or spec.name
    seed = spec.seed if seed is None else seed
    stores = stores_module.resolve(storage=storage, tracking_uri=tracking_uri)
    optuna_storage = open_storage(stores.storage)
    epochs, existing = _study_epochs(optuna_storage, name, requested=epochs,
                                     default=spec.epochs)
    # A resumed search must not replay the first run's random draws: offset the sampler's
    # seed by the trials already there (deterministic, and different on every resume).
    optuna_study = open_study(
        name=name, storage=optuna_storage, direction=spec.direction,
        sampler=make_sampler(sampler, seed + existing), pruner=make_pruner(pruner, epochs=epochs),
    )
    optuna_study.set_user_attr("epochs", epochs)
    optuna_study.set_user_attr("space", spec.name)
    budget = trials or optuna_study.user_attrs.get("budget") or spec.trials
    optuna_study.set_user_attr("budget", budget)

    # Logs and CI have no terminal: keep table rows whole rather than 80 columns wide.
    console = Console(width=None if sys.stdout.isatty() else 160)
    try:
        tracker = Tracker(tracking_uri=stores.client_uri, experiment=name,
                          artifact_location=stores.artifact_location)
    except Exception as e:  # any store or server error, as one line
        reason = mask_text(str(e).splitlines()[0] if str(e) else type(e).__name__,
                           stores.tracking_uri)
        raise UsageError(f"cannot open tracking store {mask_url(stores.tracking_uri)!r}: "
                         f"{reason}") from None
    run_tags = {"search.sampler": sampler, "search.pruner": pruner, "search.budget": str(budget),
                "search.storage": mask_url(stores.storage), "search.device": device,
                "optuna.study_name": name, "search.role": "study"}
    parent = tracker.study_run(
        run_id=optuna_study.user_attrs.get("mlflow_parent_run_id"), name=name,
        params={"study": spec.name, "epochs": epochs, "seed": seed,
                "metric": spec.metric, "direction": spec.direction},
        tags=run_tags,
    )
    optuna_study.set_user_attr("mlflow_parent_run_id", parent)

    finished = finished_count(optuna_study)
    console.print(f"study {name!r}: {finished} of {budget} trials finished; storage "
                  f"{mask_url(stores.storage)}, tracking {mask_url(stores.tracking_uri)}",
                  markup=False, highlight=False)
    status = "FINISHED"
    started = time.monotonic()
    try:
        if finished < budget:
            task = spec.task(cache_dir=stores.cache_dir, seed=seed)
            runner = TrialRunner(study=spec, task=task, tracker=tracker, parent_run_id=parent,
                                 epochs=epochs, seed=seed, device=device)
            import optuna

            failures = _FailureGuard(limit=max(budget, 10))
            with ProgressDisplay(console, budget=budget, finished=finished,
                                 metric=spec.metric) as display:
                optuna_study.optimize(
                    runner, n_trials=None, timeout=timeout, catch=(Exception,),
                    callbacks=[display, failures,
                               optuna.study.MaxTrialsCallback(budget, states=FINISHED)],
                    gc_after_trial=False,
                )
    except KeyboardInterrupt:
        status = "KILLED"
        raise
    finally:
        summary = _summary(optuna_study)
        tracker.end_study_run(parent, status=status, metrics=summary, tags=run_tags)
        tracker.close()
        for error in tracker.errors:
            console.print(f"warning: {error}", markup=False, highlight=False)
    finished = finished_count(optuna_study)
    console.print(leaderboard(optuna_study, metric=spec.metric))
    console.print(f"{state_summary(optuna_study)}; {finished} of {budget} finished in "
                  f"{time.monotonic() - started:.0f}s", markup=False, highlight=False)
    console.print(f"review: {stores_module.ui_command(stores.tracking_uri)}",
                  markup=False, highlight=False)
    if finished < budget:
        console.print(f"the study stopped short of its budget ({finished} of {budget}); run "
                      "the same command again to go on", markup=False, highlight=False)
        return 1
    return 0


class _FailureGuard:
    """Stop a search whose trials keep failing (a broken space, a missing resource)."""

    def __init__(self, *, limit: int) -> None:
        self.limit = limit
        self.failed = 0

    def __call__(self, study: Any, trial: Any) -> None:
        if trial.state.name == "FAIL":
            self.failed += 1
            if self.failed >= self.limit:
                study.stop()


def _study_epochs(storage: Any, name: str, *, requested: int | None,
                  default: int) -> tuple[int, int]:
    """The study's epochs per trial and its number of trials so far.

    A study keeps the epochs it was created with: its trials must stay comparable.
    """
    import optuna

    try:
        existing = optuna.load_study(study_name=name, storage=storage)
    except KeyError:  # a new study
        return requested or default, 0
    count = len(existing.get_trials(deepcopy=False))
    created = existing.user_attrs.get("epochs")
    if created is None:
        return requested or default, count
    if requested is not None and requested != created:
        raise UsageError(
            f"study {name!r} was created with {created} epochs per trial, not {requested}: drop "
            "--epochs to resume it, or give --name NEW to start another study"
        )
    return int(created), count


def _summary(study: Any) -> dict[str, float]:
    from search.study import state_counts

    counts = state_counts(study)
    summary: dict[str, float] = {f"trials_{k.lower()}": float(v) for k, v in counts.items()}
    try:
        summary["best_value"] = float(study.best_value)
    except ValueError:
        pass
    return summary


if __name__ == "__main__":
    sys.exit(main())
