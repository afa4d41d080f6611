"""`search.refit --per-family [loss|penalty] --seeds K`: is one family better than noise?

Each family's best completed trial is refit on train + validation with K seeds (the study's
seed, then the next ones) and tested once per seed. Per family: the mean test accuracy, macro-F1,
ECE and corruption accuracy with 95% intervals over the seeds, and each family's accuracy
against the best one's, paired seed by seed (the same seed gives the same data order and the
same initial head), so that a difference is called real only when it is larger than the seed
noise. The results are kept with the study (attribute `family_refits:<by>`), for
search.report's verdict, and logged as a table to the study's MLflow run.
"""

from __future__ import annotations

import csv
import statistics
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import optuna
from optuna.trial import FrozenTrial

from search.core import names
from search.core.errors import UsageError, first_line
from search.review.verdict import (
    METRICS,
    REFITS,
    Interval,
    family_best,
    family_trials,
    interval,
    paired,
)

Fit = Callable[[FrozenTrial, int, dict[str, str]], dict[str, Any]]


@dataclass(frozen=True)
class Plan:
    by: str  # "loss" or "penalty"
    seeds: int
    trials: dict[Any, FrozenTrial]  # each family's best completed trial, best first
    skipped: list[Any] = field(default_factory=list)  # families with no completed trial


def plan(study: optuna.Study, spec: Any, *, by: str, seeds: int) -> Plan:
    """Which trials to refit; a study without the parameter or a completed trial is one line."""
    from search.study.target import pick_target

    _, target = pick_target(study, spec.metric)
    families = family_trials(study, by)
    if not families:
        raise UsageError(f"study {study.study_name!r} has no trial with a {by} parameter: "
                         "nothing to compare per family")
    best = {f: b for f, ts in families.items()
            if (b := family_best(ts, target, target.maximize)) is not None}
    if not best:
        raise UsageError(f"study {study.study_name!r} has no completed trial to refit")
    order = sorted(best, key=lambda f: target(best[f]), reverse=target.maximize)
    return Plan(by, seeds, {f: best[f] for f in order},
                [f for f in families if f not in best])


def run(plan: Plan, fit: Fit, study: optuna.Study, *, base_seed: int,
        stores: Any) -> dict[str, Any]:
    """Refit every family's best with every seed; print, keep and log the comparison."""
    seeds = [base_seed + i for i in range(plan.seeds)]
    record: dict[str, Any] = {"by": plan.by, "seeds": seeds, "families": {}}
    total = len(plan.trials) * len(seeds)
    done = 0
    for family, trial in plan.trials.items():
        row: dict[str, Any] = {"trial": trial.number, "params": dict(trial.params), "runs": [],
                               **{m: [] for m in METRICS}}
        for seed in seeds:
            done += 1
            print(f"[{done}/{total}] {plan.by} {family}: trial {trial.number}, seed {seed}",
                  flush=True)
            result = fit(trial, seed, {"search.family": str(family),
                                       "search.family_of": plan.by,
                                       "search.refit_seed": str(seed)})
            row["runs"].append(result["run_id"])
            for metric in METRICS:
                row[metric].append(float(result["metrics"][metric]))
        record["families"][str(family)] = row
        study.set_user_attr(f"{REFITS}:{plan.by}", record)  # kept family by family
    rows = table_rows(record)
    from rich.console import Console

    from search.review.report import make_table

    Console(width=None if sys.stdout.isatty() else 160).print(make_table(
        f"{plan.by} families, each best trial refit with {len(seeds)} seeds: mean ± 95% "
        "interval; diff: test accuracy minus the best family's, paired by seed", COLUMNS,
        [[_cell(v) for v in r] for r in rows]))
    if plan.skipped:
        print(f"not refit (no completed trial): {', '.join(map(str, plan.skipped))}")
    print(_log(study, rows, plan.by, stores))
    return record


COLUMNS = ("family", "trial", *(m.removeprefix("test_") for m in METRICS), "diff",
           "vs best")


def table_rows(record: dict[str, Any]) -> list[list[Any]]:
    """One row per family, best mean test accuracy first."""
    families = record["families"]
    means = {f: statistics.fmean(r["test_accuracy"]) for f, r in families.items()}
    best = max(means, key=lambda f: means[f])
    rows = []
    for family in sorted(families, key=lambda f: -means[f]):
        row = families[family]
        gap = paired(row["test_accuracy"], families[best]["test_accuracy"])
        verdict = ("best" if family == best else "no interval (1 seed)" if gap.n < 2
                   else "worse beyond noise" if gap.excludes_zero else "within noise")
        rows.append([family, row["trial"], *(interval(row[m]) for m in METRICS),
                     None if family == best else gap, verdict])
    return rows


def _cell(value: Any) -> Any:
    if isinstance(value, Interval):
        if value.n < 2:
            return f"{value.mean:.4f}"
        return f"{value.mean:.4f} ± {(value.high - value.low) / 2:.4f}"
    return value


def _numbers(row: Sequence[Any]) -> list[Any]:
    """A row for the CSV file: each interval as its mean, low and high (the best family's
    difference from itself, None, as three empty cells)."""
    cells: list[Any] = []
    for value in row:
        cells += ([value.mean, value.low, value.high] if isinstance(value, Interval)
                  else [None] * 3 if value is None else [value])
    return cells


def _log(study: optuna.Study, rows: Sequence[list[Any]], by: str, stores: Any) -> str:
    """The table as CSV and Markdown under mlruns/reports/NAME/, logged to the study's run."""
    folder = Path("mlruns") / "reports" / study.study_name / f"refits-{by}"
    folder.mkdir(parents=True, exist_ok=True)
    cells = [[_cell(v) for v in r] for r in rows]
    numeric = [*COLUMNS[:2], *(f"{c}_{end}" for c in COLUMNS[2:-1]
                               for end in ("mean", "low", "high")), COLUMNS[-1]]
    with (folder / f"per_family_{by}.csv").open("w", newline="") as f:
        csv.writer(f).writerows([numeric, *(_numbers(r) for r in rows)])
    lines = ["| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    lines += ["| " + " | ".join("" if c is None else str(c) for c in r) + " |" for r in cells]
    (folder / f"per_family_{by}.md").write_text("\n".join(lines) + "\n")
    parent = study.user_attrs.get(names.MLFLOW_PARENT_RUN_ID)
    if not parent:
        return f"written to {folder}/ (the study has no MLflow run to log them to)"
    try:
        from search.tracking.tracker import log_folder

        log_folder(stores.client_uri, parent, folder, "refit")
    except Exception as e:  # any store or server error, as one line
        return f"written to {folder}/; warning: not logged to MLflow: {first_line(e)}"
    return f"written to {folder}/ and logged under refit/ in MLflow run {parent}"
