"""What search.report writes: the verdict, the leaderboard, the family and importance tables,
the plots and the trials' CSV, read from a study without changing it."""

from __future__ import annotations

import csv
import functools
import statistics
import sys
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import optuna
from optuna.trial import TrialState
from rich.console import Console
from rich.table import Table

from search.core import names
from search.core.errors import UsageError, first_line
from search.core.urls import mask_text, mask_url
from search.review.importances import global_params, param_importances
from search.review.plots import draw_family_plots
from search.review.verdict import family_trials, verdict
from search.storage.reading import load
from search.storage.stores import Stores, check_tracking_store, resolve
from search.study import warmstart
from search.study.display import (
    describe_params,
    key_columns,
    leaderboard,
    recipe_mark,
    state_summary,
)
from search.study.race import Result as RaceResult
from search.study.race import header, race_table, rows
from search.study.target import Target, pick_target

PLOTS = ("optimization_history", "learning_curves", "families", "pareto_front",
         "parallel_coordinate", "param_importances", "slice")

TABLES = ("verdict.md", "race.csv", "loss_families.csv", "penalty_families.csv", "importances.csv",
          "trials.csv", "pareto_front.csv")

COUNTED = {TrialState.COMPLETE: "completed", TrialState.PRUNED: "pruned",
           TrialState.FAIL: "failed"}

def report(*, study: str, name: str | None = None, storage: str | None = None,
           tracking_uri: str | None = None, out: str | None = None, top: int = 10,
           export_best: tuple[int, str] | None = None) -> Path:
    """Print the report, write its files and log them to MLflow; returns the folder.

    `export_best` (K, FILE): the K best configurations written to FILE, first, so that a path
    that cannot be written stops the report before it starts.
    """
    from search.core.runtime import quiet_libraries
    from search.study import lookup as studies

    quiet_libraries()
    stores = resolve(storage=storage, tracking_uri=tracking_uri)
    spec = studies.find(study, storage=stores.storage, name=name)  # unknown: one line, exit 2
    name = name or spec.name
    found = load(stores.storage, name, study)
    exported = warmstart.export_best(found, *export_best) if export_best else None
    folder = Path(out) if out else Path("mlruns") / "reports" / name
    try:
        folder.mkdir(parents=True, exist_ok=True)
        # A file an earlier report wrote but this one cannot (a skipped plot) must not linger.
        for stale in (*TABLES, *(f"{p}.{ext}" for p in PLOTS for ext in ("html", "png"))):
            (folder / stale).unlink(missing_ok=True)
    except OSError as e:
        raise UsageError(f"cannot write to {folder}/ ({e.strerror or e}): give --out") from None
    console = Console(width=None if sys.stdout.isatty() else 160)  # logs, CI: rows kept whole
    say = functools.partial(console.print, markup=False, highlight=False, soft_wrap=True)
    metrics, target = pick_target(found, spec.metric)
    say(f"study {name!r}: {len(found.trials)} trials; storage {mask_url(stores.storage)}")
    race = race_result(found)
    paragraphs = [text for by in ("loss", "penalty") if (text := verdict(
        found, by=by, value=target, metric=target.name, maximize=target.maximize))]
    if race is not None:  # the search's own answer comes first
        paragraphs.insert(0, race_verdict(race, study))
    if paragraphs:
        say("\n\n".join(paragraphs) + "\n")
        (folder / "verdict.md").write_text(f"# Verdict: study {name}\n\n"
                                           + "\n\n".join(paragraphs) + "\n")
    console.print(leaderboard(found, metric=",".join(metrics), top=top))
    say(state_summary(found))
    if target.multi:
        console.print(pareto_table(found, metrics, folder / "pareto_front.csv"))
    elif found.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)):
        best = found.best_trial
        say(f"best: trial {best.number}{recipe_mark(best)} {metrics[0]}={best.values[0]:.4f} "
            f"[{describe_params(best.params)}]")
    if race is not None:
        console.print(race_table(race))
        write_csv(folder / "race.csv", header(race), rows(race))
    if export_best and exported:
        say(f"wrote the {len(exported)} best configuration{'s' * (len(exported) != 1)} of "
            f"study {name!r} to {export_best[1]}")
    for by in ("loss", "penalty"):
        console.print(families_table(found, target, folder / f"{by}_families.csv", by=by))
    table, notes = importances_table(found, target, folder / "importances.csv")
    say(table or "parameter importances need at least 2 completed trials")
    for note in notes + draw_plots(found, folder, target, metrics):
        say(f"note: {note}")
    found.trials_dataframe().to_csv(folder / "trials.csv", index=False)
    say(f"report written to {folder}/: {', '.join(sorted(p.name for p in folder.iterdir()))}")
    say(log_report(found, folder, stores))
    return folder


def race_result(study: optuna.Study) -> RaceResult | None:
    """What the search's race decided, if it ran to the end."""
    stored = study.user_attrs.get(names.RACE)
    return RaceResult.from_json(stored) if stored else None


def race_verdict(race: RaceResult, study: str) -> str:
    """The race's decision as the verdict's first paragraph."""
    pick = race.entry(race.pick)
    if pick is None:
        return f"The race of the finalists decided nothing: {race.statement}."
    return (f"The answer (a race of {len(race.finalists)} finalists on {race.resamplings} "
            f"fresh resamplings of train + validation): {race.statement}. The pick is "
            f"{pick.label} [{describe_params(pick.params)}]; "
            f"python -m search.refit --study {study} refits it.")


def families_table(study: optuna.Study, target: Target, path: Path, *,
                   by: str = "loss") -> Table:
    """One row per loss (or penalty) family, best first; also written to `path`."""
    rows = []
    for family, trials in family_trials(study, by).items():
        # Running and waiting trials are among the trials only.
        count = [sum(t.state == state for t in trials) for state in COUNTED]
        values = [target(t) for t in trials if t.state == TrialState.COMPLETE]
        best = (max if target.maximize else min)(values) if values else None
        rows.append([str(family), len(trials), *count, best,
                     statistics.median(values) if values else None])
    sign = -1 if target.maximize else 1  # best first; families with no completed trial last
    rows.sort(key=lambda r: (r[-2] is None, sign * (r[-2] or 0.0), r[0]))
    columns = [by, "trials", *COUNTED.values(), f"best_{target.name}",
               f"median_{target.name}"]
    write_csv(path, columns, rows)
    balanced = " (balanced: equal trials per family)" if study.user_attrs.get(
        "balance") == by else ""
    return make_table(f"{by} families by {target.name} of their completed trials{balanced}",
                      columns, rows)

def pareto_table(study: optuna.Study, metrics: list[str], path: Path) -> Table:
    """The Pareto front (a multi-objective study has no single best); also written to `path`."""
    reverse = study.directions[0] == optuna.study.StudyDirection.MAXIMIZE
    front = sorted(study.best_trials, key=lambda t: t.values[0], reverse=reverse)
    params = list(dict.fromkeys(p for t in front for p in t.params))
    write_csv(path, ["trial", *metrics, *params],
              [[t.number, *t.values, *(t.params.get(p) for p in params)] for t in front])
    cells = [key_columns(t.params) for t in front]
    columns = list(dict.fromkeys(k for row in cells for k in row))
    return make_table(f"Pareto front of study {study.study_name!r}: {len(front)} trials",
                      ["trial", *metrics, *columns],
                      [[t.number, *t.values, *(row.get(c, "") for c in columns)]
                       for t, row in zip(front, cells, strict=True)])

def importances_table(study: optuna.Study, target: Target,
                      path: Path) -> tuple[Table | None, list[str]]:
    """Parameter importances (None before 2 completed trials), written to `path`; and notes.

    The ranking covers the parameters every trial has; one that exists under one choice only
    (focal_gamma) is ranked among the trials that have it, its scope said
    (search.review.importances).
    """
    found, notes = param_importances(study, target.for_importances())
    if not found:
        return None, [f"parameter importances: {n}" for n in notes]
    columns = ["parameter", "importance", "scope", "trials"]
    rows: list[list[Any]] = [[i.parameter, i.importance, i.scope, i.trials] for i in found]
    write_csv(path, columns, rows)
    return make_table(f"parameter importances ({target.name}); a conditional parameter's share "
                      "is among the trials of its scope", columns, rows), [
        f"parameter importances: {n}" for n in notes]

def draw_plots(study: optuna.Study, folder: Path, target: Target, metrics: list[str]) -> list[str]:
    """Each plot as HTML (plotly) and PNG (matplotlib); notes for the plots skipped."""
    import matplotlib.pyplot as plt
    import numpy as np
    from optuna import visualization as plotly_plots
    from optuna.visualization import matplotlib as png_plots

    plt.switch_backend("Agg")  # files only: no display needed (servers, CI)
    completed = len(study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)))
    none = "no completed trial yet" if not completed else None
    single = {"target": target, "target_name": target.name} if target.multi else {}
    plots: list[tuple[str, dict[str, Any], str | None]] = [  # (name, arguments, why not)
        ("pareto_front", {"target_names": metrics}, none)] if target.multi else [  # trade-off
        ("optimization_history", {}, none)]
    plots += [("parallel_coordinate", single, none),
              ("param_importances", {"target": target.for_importances(),
                                     "target_name": target.name,
                                     "params": global_params(study, target.for_importances())},
               "needs at least 2 completed trials" if completed < 2 else None),
              ("slice", single, none)]
    # Learning curves and values by loss family: Optuna's own plots name every trial.
    notes = draw_family_plots(study, folder, metric=target.name, maximize=target.maximize,
                              index=target.index)
    for name, kwargs, missing in plots:
        if missing:
            notes.append(f"{name} plot skipped: {missing}")
            continue
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # the importances table gave its notes
                getattr(plotly_plots, f"plot_{name}")(study, **kwargs).write_html(
                    folder / f"{name}.html", include_plotlyjs="cdn")  # as mlflow.log_figure
                axes = getattr(png_plots, f"plot_{name}")(study, **kwargs)
            figure = np.ravel(axes)[0].figure  # a slice plot is a row of axes
            figure.savefig(folder / f"{name}.png", dpi=100, bbox_inches="tight")
            plt.close(figure)
        except (ValueError, RuntimeError) as e:
            notes.append(f"{name} plot skipped: {first_line(e)}")
    return notes

def make_table(title: str, columns: Sequence[str], rows: list[list[Any]]) -> Table:
    """A rich table: numbers right-aligned, floats to 4 digits, None as an empty cell."""
    table = Table(title=title, min_width=len(title))  # a title on one line
    for i, column in enumerate(columns):
        numeric = any(isinstance(row[i], (int, float)) for row in rows)
        table.add_column(column, justify="right" if numeric else "left", no_wrap=True)
    for row in rows:
        table.add_row(*("" if v is None else f"{v:.4f}" if isinstance(v, float) else str(v)
                        for v in row))
    return table

def write_csv(path: Path, columns: Sequence[str], rows: list[list[Any]]) -> None:
    with path.open("w", newline="") as f:
        csv.writer(f).writerows([columns, *rows])

def log_report(study: optuna.Study, folder: Path, stores: Stores) -> str:
    """Log the folder under report/ in the study's MLflow run; says how that went."""
    parent = study.user_attrs.get(names.MLFLOW_PARENT_RUN_ID)
    if not parent:
        return (f"warning: study {study.study_name!r} has no MLflow run (mlflow_parent_run_id): "
                "the report is not logged to MLflow")
    try:
        from search.tracking.tracker import log_folder  # here: importing MLflow takes seconds

        check_tracking_store(stores.tracking_uri)  # a store that does not answer: said at once
        log_folder(stores.client_uri, parent, folder, "report")
    except UsageError as e:
        return f"warning: report not logged to MLflow: {e}"
    except Exception as e:  # any store or server error, as one line
        reason = mask_text(first_line(e), stores.tracking_uri)
        return (f"warning: report not logged to MLflow run {parent} in "
                f"{mask_url(stores.tracking_uri)}: {reason}")
    return f"logged under report/ in MLflow run {parent}"
