"""One search session: open the study and its stores, run trials until the budget, close.

`search.run` is its command line; the benchmark drives it directly.
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import optuna
from optuna.trial import FrozenTrial

import spaces
from objectives.data import Task
from search import stores as stores_module
from search.errors import UsageError
from search.storage import open_storage
from search.study import (
    FINISHED,
    finished_count,
    make_pruner,
    make_sampler,
    open_study,
    state_counts,
)
from search.tracking import Tracker
from search.trial import TrialRunner
from search.urls import mask_text, mask_url

Callback = Callable[[optuna.Study, FrozenTrial], None]

_TASKS: dict[tuple[Any, ...], Task] = {}


def quiet_libraries() -> None:
    # Our own one line per trial replaces Optuna's; failures are reported with their reason.
    optuna.logging.set_verbosity(optuna.logging.ERROR)
    for name in ("mlflow", "alembic", "sqlalchemy"):
        logging.getLogger(name).setLevel(logging.WARNING)
    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)


def pick_device(name: str) -> str:
    import torch

    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda" and not torch.cuda.is_available():
        raise UsageError("--device cuda but no CUDA device is visible: use --device cpu")
    return name


@dataclass
class Search:
    spec: spaces.Study
    study: optuna.Study
    stores: stores_module.Stores
    tracker: Tracker
    parent_run_id: str
    budget: int
    epochs: int
    seed: int
    device: str
    run_tags: dict[str, str] = field(default_factory=dict)

    @property
    def finished(self) -> int:
        return finished_count(self.study)

    def task(self) -> Task:
        """The study's task, loaded once per process."""
        key = (self.spec.name, self.stores.cache_dir, self.seed)
        if key not in _TASKS:
            _TASKS[key] = self.spec.task(cache_dir=self.stores.cache_dir, seed=self.seed)
        return _TASKS[key]

    def optimize(self, *, timeout: float | None = None, n_trials: int | None = None,
                 callbacks: Sequence[Callback] = ()) -> None:
        """Run trials until the study has its budget of finished trials (or the timeout).

        `n_trials` stops after that many more trials of this process (the benchmark's steps).
        """
        if self.finished >= self.budget:
            return
        runner = TrialRunner(study=self.spec, task=self.task(), tracker=self.tracker,
                             parent_run_id=self.parent_run_id, epochs=self.epochs,
                             seed=self.seed, device=self.device)
        failures = _FailureGuard(limit=max(self.budget, 10))
        self.study.optimize(
            runner, n_trials=n_trials, timeout=timeout, catch=(Exception,),
            callbacks=[*callbacks, failures,
                       optuna.study.MaxTrialsCallback(self.budget, states=FINISHED)],
            gc_after_trial=False,
        )

    def close(self, *, status: str = "FINISHED") -> list[str]:
        """End the parent run with a summary, write everything queued; returns tracking errors."""
        self.tracker.end_study_run(self.parent_run_id, status=status,
                                   metrics=_summary(self.study), tags=self.run_tags)
        self.tracker.close()
        return list(self.tracker.errors)


def open_search(
    *, study: str, name: str | None = None, storage: str | None = None,
    tracking_uri: str | None = None, trials: int | None = None, epochs: int | None = None,
    sampler: str = "tpe", pruner: str = "hyperband", seed: int | None = None,
    device: str = "auto",
) -> Search:
    """Open (or create) the study, its storage and its MLflow parent run; no trial runs yet."""
    try:
        spec = spaces.get_study(study)
    except ValueError as e:
        raise UsageError(str(e)) from None
    quiet_libraries()
    device = pick_device(device)
    name = name or spec.name
    seed = spec.seed if seed is None else seed
    stores = stores_module.resolve(storage=storage, tracking_uri=tracking_uri)
    storage_obj = open_storage(stores.storage)
    epochs, existing = _study_epochs(storage_obj, name, requested=epochs, default=spec.epochs)
    # A resumed search must not replay the first run's random draws: offset the sampler's
    # seed by the trials already there (deterministic, and different on every resume).
    optuna_study = open_study(
        name=name, storage=storage_obj, direction=spec.direction,
        sampler=make_sampler(sampler, seed + existing), pruner=make_pruner(pruner, epochs=epochs),
    )
    optuna_study.set_user_attr("epochs", epochs)
    optuna_study.set_user_attr("space", spec.name)
    budget = trials or optuna_study.user_attrs.get("budget") or spec.trials
    optuna_study.set_user_attr("budget", budget)
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
        params={"study": spec.name, "epochs": epochs, "seed": seed, "metric": spec.metric,
                "direction": spec.direction},
        tags=run_tags,
    )
    optuna_study.set_user_attr("mlflow_parent_run_id", parent)
    return Search(spec=spec, study=optuna_study, stores=stores, tracker=tracker,
                  parent_run_id=parent, budget=budget, epochs=epochs, seed=seed, device=device,
                  run_tags=run_tags)


class _FailureGuard:
    """Stop a search whose trials keep failing (a broken space, a missing resource)."""

    def __init__(self, *, limit: int) -> None:
        self.limit = limit
        self.failed = 0

    def __call__(self, study: optuna.Study, trial: FrozenTrial) -> None:
        if trial.state.name == "FAIL":
            self.failed += 1
            if self.failed >= self.limit:
                study.stop()


def _study_epochs(storage: Any, name: str, *, requested: int | None,
                  default: int) -> tuple[int, int]:
    """The study's epochs per trial and its number of trials so far.

    A study keeps the epochs it was created with: its trials must stay comparable.
    """
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


def _summary(study: optuna.Study) -> dict[str, float]:
    counts = state_counts(study)
    summary: dict[str, float] = {f"trials_{k.lower()}": float(v) for k, v in counts.items()}
    try:
        summary["best_value"] = float(study.best_value)
    except ValueError:
        pass
    return summary
