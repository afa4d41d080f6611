"""What a person watching a search sees: a line per trial, a progress bar, and a leaderboard."""

from __future__ import annotations

import functools
import math
from collections import Counter
from collections.abc import Iterable
from typing import Any

import optuna
from optuna.trial import FrozenTrial, TrialState
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from search.core import names


@functools.cache
def _loss_params() -> dict[str, str]:
    """A loss parameter's field -> its short name: a choice and the parameters that only exist
    under it are shown together in one column."""
    from objectives.losses import LOSS_PARAMS  # imports PyTorch: not before a trial is shown

    return {p.field: p.short for params in LOSS_PARAMS.values() for p in params if p.short}


def fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.3g}" if abs(value) >= 1e-3 or value == 0 else f"{value:.1e}"
    return str(value)


def key_columns(params: dict[str, Any]) -> dict[str, str]:
    """The parameters people compare, one readable cell each."""
    cells: dict[str, str] = {}
    if "loss" in params:
        extra = [f"{short}={fmt(params[k])}" for k, short in _loss_params().items() if k in params]
        cells["loss"] = params["loss"] + (f"({', '.join(extra)})" if extra else "")
    if "penalty" in params:
        lam = params.get("penalty_lambda")
        cells["penalty"] = params["penalty"] + (f" {fmt(lam)}" if lam is not None else "")
    if "optimizer" in params:
        extra = [fmt(params["momentum"])] if "momentum" in params else []
        if params.get("nesterov"):
            extra.append("nesterov")
        cells["optimizer"] = params["optimizer"] + (f"({', '.join(extra)})" if extra else "")
    for key, title in (("lr", "lr"), ("freeze_depth", "freeze"), ("batch_size", "batch")):
        if key in params:
            cells[title] = fmt(params[key])
    known = {"loss", "penalty", "penalty_lambda", "optimizer", "momentum", "nesterov", "lr",
             "freeze_depth", "batch_size", *_loss_params()}
    cells.update({k: fmt(v) for k, v in params.items() if k not in known})
    return cells


def describe_params(params: dict[str, Any]) -> str:
    return " ".join(f"{k}={v}" for k, v in key_columns(params).items())


def recipe_mark(trial: FrozenTrial) -> str:
    """" (recipe adamw)" for a trial that ran a study's standard recipe, else ""."""
    recipe = trial.user_attrs.get(names.RECIPE)
    return f" (recipe {recipe})" if recipe else ""


class ProgressDisplay:
    """An Optuna callback: prints one line per finished trial and keeps a live progress bar."""

    def __init__(self, console: Console, *, budget: int, finished: int, metric: str) -> None:
        self.console = console
        self.budget = budget
        self.metric = metric
        self.counts: Counter[str] = Counter()
        self.progress = Progress(
            TextColumn("[bold]trials"), BarColumn(), MofNCompleteColumn(),
            TextColumn("{task.description}"), TimeElapsedColumn(), console=console,
            transient=True,
        )
        self.task_id = self.progress.add_task("", total=budget, completed=finished)

    def __enter__(self) -> ProgressDisplay:
        self.progress.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.progress.stop()

    def __call__(self, study: optuna.Study, trial: FrozenTrial) -> None:
        state = trial.state.name
        self.counts[state] += 1
        seconds = trial.duration.total_seconds() if trial.duration else 0.0
        if trial.state == TrialState.COMPLETE:
            metric_names = self.metric.split(",")
            outcome = " ".join(f"{m}={v:.4f}"
                               for m, v in zip(metric_names, trial.values, strict=False))
        elif trial.state == TrialState.PRUNED:
            outcome = f"pruned at epoch {trial.user_attrs.get('pruned_epoch', '?')}"
        else:
            outcome = trial.user_attrs.get(names.FAIL_REASON, "failed")
        best = best_trial(study)
        best_text = f"best {best.values[0]:.4f} (#{best.number})" if best else "no best yet"
        self.console.print(
            f"trial {trial.number:>3} {state:<8} {outcome}  [{describe_params(trial.params)}]"
            f"{recipe_mark(trial)}  {seconds:.1f}s  {best_text}",
            markup=False, highlight=False, soft_wrap=True,
        )
        finished = len(study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,
                                                                 TrialState.PRUNED)))
        self.progress.update(
            self.task_id, completed=min(finished, self.budget),
            description=f"{best_text}  pruned {self.counts['PRUNED']}  "
                        f"failed {self.counts['FAIL']}",
        )


def best_trial(study: optuna.Study) -> FrozenTrial | None:
    """The best trial; of a multi-objective study, the best of its Pareto front on its first
    objective."""
    if len(study.directions) > 1:
        maximize = study.directions[0] == optuna.study.StudyDirection.MAXIMIZE
        return best_of(study.best_trials, 0, maximize)
    try:
        return study.best_trial  # one ordered query on a database
    except ValueError:
        return None


def best_of(trials: Iterable[FrozenTrial], index: int, maximize: bool) -> FrozenTrial | None:
    """The trial with the best finite `values[index]` among the completed `trials` (the first
    of equal values), or None."""
    scored = [(v, t) for t in trials if (v := final_value(t, index)) is not None]
    if not scored:
        return None
    pick = max if maximize else min  # the first of equal values: the lowest trial number
    return pick(scored, key=lambda pair: pair[0])[1]


def final_value(trial: FrozenTrial, index: int) -> float | None:
    """`values[index]` of a completed trial; None for any other trial or a value not finite."""
    if trial.state != TrialState.COMPLETE or not trial.values or len(trial.values) <= index:
        return None
    value = trial.values[index]
    return value if math.isfinite(value) else None


def leaderboard(study: optuna.Study, *, metric: str, top: int = 10) -> Table:
    """The top trials by the first objective (`metric`: comma-separated names, one per value);
    a study's standard recipes are named in a column "recipe"."""
    trials = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    reverse = study.directions[0] == optuna.study.StudyDirection.MAXIMIZE
    ranked = sorted(trials, key=lambda t: float(t.values[0]), reverse=reverse)[:top]
    rows = [key_columns(t.params) for t in ranked]
    columns = list(dict.fromkeys(k for row in rows for k in row))
    recipes = [str(t.user_attrs.get(names.RECIPE) or "") for t in ranked]
    metrics = metric.split(",")
    table = Table(title=f"top {len(ranked)} trials of study {study.study_name!r} by {metrics[0]}")
    for column in ("rank", "trial", *metrics):
        table.add_column(column, justify="right", no_wrap=True)
    if any(recipes):
        table.add_column("recipe", no_wrap=True)
    for column in columns:
        table.add_column(column, no_wrap=True)
    for rank, (trial, row, recipe) in enumerate(zip(ranked, rows, recipes, strict=True), 1):
        table.add_row(str(rank), str(trial.number), *(f"{v:.4f}" for v in trial.values),
                      *([recipe] if any(recipes) else []), *(row.get(c, "") for c in columns))
    return table


def state_summary(study: optuna.Study) -> str:
    counts = Counter(t.state.name for t in study.get_trials(deepcopy=False))
    order = ("COMPLETE", "PRUNED", "FAIL", "RUNNING", "WAITING")
    return ", ".join(f"{counts[s]} {s.lower()}" for s in order if counts[s]) or "no trials"
