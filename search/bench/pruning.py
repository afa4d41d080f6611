"""`python -m search.bench --only pruning`: pruners compared at equal epoch budgets.

A pruner saves epochs; what it saves is worth something only if a search that spends the
epochs saved on more trials finds at least as good a configuration. So each pruner gets the
epochs the unpruned search of the study's default budget (40 trials) used, and runs trials
until they are spent, on the same seeds:

- best: the best validation value among the trials that finished within the budget;
- epochs to match: the epochs spent when a trial first reached the unpruned search's best
  (over the budget: not reached), as a share of the budget.

Candidates: no pruner; Hyperband with a minimum resource of 1, 2 and 3 epochs; ASHA; the
median pruner; and Optuna's PatientPruner (patience 2) around the best of these. The studies:
`curves` (simulated curves, 20 seeds in seconds each) and `digits` (real training, minutes a
seed). Trials run in this process, through the study's own space, sampler (seeded TPE) and
training, on an in-memory Optuna storage without MLflow: a pruner's decisions depend on
nothing else, and the coordination costs are the scale and overhead sections' business.
"""

from __future__ import annotations

import functools
import math
import statistics
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import optuna
from optuna.pruners import BasePruner

import spaces
from search.study.optuna_study import HYPERBAND_MIN_RESOURCE, hyperband, make_sampler
from spaces import Settings

STUDIES = {"curves": 20, "digits": 5}  # the studies compared, and their default seed counts
OUT = Path("mlruns/bench")
DEFAULT = f"hyperband, min {HYPERBAND_MIN_RESOURCE}"  # what search.run --pruner hyperband makes
PATIENCE = 2  # epochs without improvement PatientPruner waits before asking the wrapped pruner


CANDIDATES: dict[str, Callable[[int], BasePruner]] = {
    "none": lambda epochs: optuna.pruners.NopPruner(),
    **{f"hyperband, min {m}": functools.partial(hyperband, min_resource=m) for m in (1, 2, 3)},
    "asha": lambda epochs: optuna.pruners.SuccessiveHalvingPruner(min_resource=1,
                                                                  reduction_factor=3),
    "median": lambda epochs: optuna.pruners.MedianPruner(n_startup_trials=5,
                                                         n_warmup_steps=max(1, epochs // 5)),
}


@dataclass
class Search:
    """One search's trials in order: the epochs spent so far after each, and its value (None
    when it was pruned or failed)."""

    spent: list[int] = field(default_factory=list)
    values: list[float | None] = field(default_factory=list)
    seconds: float = 0.0

    def best(self, budget: int) -> float:
        found = [v for s, v in zip(self.spent, self.values, strict=True)
                 if v is not None and s <= budget]
        return max(found) if found else math.nan

    def reached(self, target: float, budget: int) -> float:
        """Epochs spent when a trial first matched `target`, as a share of `budget` (inf when
        none did within it)."""
        for s, v in zip(self.spent, self.values, strict=True):
            if s > budget:
                break
            if v is not None and v >= target - 1e-9:
                return s / budget
        return math.inf


def run_search(study: str, pruner: BasePruner, *, seed: int, task: Any,
               trials: int | None = None, budget: int | None = None) -> Search:
    """A search of `study` with `pruner`: `trials` trials, or until `budget` epochs are spent."""
    from objectives.train import DivergedError, fine_tune

    spec = spaces.get_study(study)
    settings = Settings(epochs=spec.epochs, seed=seed, resolution=spec.resolution)
    train = spec.train or fine_tune
    found = Search()

    def objective(trial: optuna.Trial) -> float:
        epochs = 0

        def on_epoch(epoch: int, metrics: dict[str, float]) -> None:
            nonlocal epochs
            epochs = epoch
            trial.report(metrics[spec.metric], epoch)
            if trial.should_prune():
                raise optuna.TrialPruned

        value = None
        try:
            value = train(spec.space(trial, settings), task, on_epoch=on_epoch).final[spec.metric]
            return value
        except DivergedError as e:
            epochs = e.epoch  # the epoch whose loss was not finite was trained too
            raise
        finally:
            found.spent.append((found.spent[-1] if found.spent else 0) + epochs)
            found.values.append(value)
            if budget is not None and found.spent[-1] >= budget:
                trial.study.stop()

    started = time.perf_counter()
    verbosity = optuna.logging.get_verbosity()
    # Quiet: a study per search is created in memory, and diverged trials are expected here.
    optuna.logging.set_verbosity(optuna.logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            direction = optuna.study.StudyDirection[spec.direction.upper()]
            optuna_study = optuna.create_study(direction=direction, pruner=pruner,
                                               sampler=make_sampler("tpe", seed))
            optuna_study.optimize(objective, n_trials=trials, catch=(Exception,))
    finally:
        optuna.logging.set_verbosity(verbosity)
    found.seconds = time.perf_counter() - started
    return found


def _patient(inner: Callable[[int], BasePruner], epochs: int) -> BasePruner:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        return optuna.pruners.PatientPruner(inner(epochs), patience=PATIENCE)


@dataclass
class Row:
    pruner: str
    best: list[float]  # per seed, within the budget
    gap: list[float]  # per seed, points over the unpruned search's best
    reached: list[float]  # per seed, share of the budget spent to match it (inf: not)
    trials: list[int]
    seconds: list[float]

    def medians(self) -> dict[str, float]:
        return {"best": statistics.median(self.best), "gap": statistics.median(self.gap),
                "reached": statistics.median(self.reached),
                "matched": sum(r <= 1 for r in self.reached) / len(self.reached),
                "trials": statistics.median(self.trials),
                "seconds": statistics.median(self.seconds)}


def compare(study: str, *, seeds: list[int], trials: int | None = None,
            log: Callable[[str], None] = print) -> dict[str, Any]:
    """Every candidate, then PatientPruner around the best of them, on each seed."""
    spec = spaces.get_study(study)
    trials = trials or spec.trials
    rows: dict[str, Row] = {}
    references = {seed: run_search(study, CANDIDATES["none"](spec.epochs), seed=seed,
                                   task=_task(spec, seed), trials=trials) for seed in seeds}
    _measure(rows, "none", CANDIDATES["none"], spec, references, log, reuse=True)
    for name, make in CANDIDATES.items():
        if name != "none":
            _measure(rows, name, make, spec, references, log)
    best = max((r for r in rows.values() if r.pruner != "none"),
               key=lambda r: (r.medians()["gap"], -r.medians()["reached"]))
    name = f"patient({best.pruner})"
    _measure(rows, name, functools.partial(_patient, CANDIDATES[best.pruner]), spec,
             references, log)
    return {"study": study, "trials": trials, "epochs": spec.epochs, "seeds": seeds,
            "budget": statistics.median(r.spent[-1] for r in references.values()), "rows": rows}


def _task(spec: spaces.Study, seed: int) -> Any:
    """The study's task on the CPU, loaded once per process (a simulation without sleeps)."""
    from search.core.runtime import load_task
    from search.storage import stores

    cache = stores.resolve(storage=None, tracking_uri=None).cache_dir
    return load_task(spec, spaces.TaskOptions(seed=seed, cache_dir=cache, time_scale=0.0), "cpu")


def _measure(rows: dict[str, Row], name: str, make: Callable[[int], BasePruner],
             spec: spaces.Study, references: dict[int, Search],
             log: Callable[[str], None], *, reuse: bool = False) -> None:
    row = Row(name, [], [], [], [], [])
    for seed, reference in references.items():
        budget = reference.spent[-1]  # the unpruned search's epochs
        if reuse:
            found = reference
        else:
            found = run_search(spec.name, make(spec.epochs), seed=seed, task=_task(spec, seed),
                               budget=budget)
        target = reference.best(budget)
        row.best.append(found.best(budget))
        row.gap.append(100 * (found.best(budget) - target))
        row.reached.append(found.reached(target, budget))
        row.trials.append(sum(s <= budget for s in found.spent))
        row.seconds.append(found.seconds)
    rows[name] = row
    m = row.medians()
    log(f"  {name}: best {m['best']:.4f} ({m['gap']:+.2f} points), matched the unpruned best "
        f"on {100 * m['matched']:.0f}% of seeds, median at {_share(m['reached'])} of the "
        f"epochs, {m['trials']:.0f} trials, {m['seconds']:.1f}s a seed")


def _share(value: float) -> str:
    return "never" if math.isinf(value) else f"{value:.2f}x"


def table(result: dict[str, Any]) -> list[str]:
    """The comparison as Markdown lines (what the README quotes)."""
    lines = [f"`{result['study']}`, {len(result['seeds'])} seeds, budget {result['budget']:.0f} "
             f"epochs (median; the unpruned search of {result['trials']} trials of "
             f"{result['epochs']} epochs):", "",
             "| pruner | best at the budget (median) | points vs unpruned (median) | seeds "
             "matching the unpruned best | epochs to match it (median share) | trials run |",
             "| --- | --- | --- | --- | --- | --- |"]
    for row in result["rows"].values():
        m = row.medians()
        lines.append(f"| {row.pruner} | {m['best']:.4f} | {m['gap']:+.2f} | "
                     f"{100 * m['matched']:.0f}% | {_share(m['reached'])} | {m['trials']:.0f} |")
    return lines


def verdict(result: dict[str, Any], pruner: str) -> str:
    """The target, for `pruner`: at least the unpruned best, in at most a third of its epochs."""
    m = result["rows"][pruner].medians()
    ok = m["gap"] >= 0 and m["reached"] <= 1 / 3
    return (f"{result['study']}: {pruner}: {m['gap']:+.2f} points at the unpruned budget, "
            f"matched its best at {_share(m['reached'])} of the epochs (medians over "
            f"{len(result['seeds'])} seeds)  [target >= +0.00 points, <= 0.33x]: "
            + ("met" if ok else "not met"))


def write(results: list[dict[str, Any]], *, default: str = DEFAULT, out: Path = OUT) -> list[str]:
    """Every study's table and the default pruner's verdict, as printed and as written to
    `out`/pruning.md."""
    lines = ["# Pruners at equal epoch budgets", ""]
    for result in results:
        lines += [*table(result), "", verdict(result, default), ""]
    out.mkdir(parents=True, exist_ok=True)
    (out / "pruning.md").write_text("\n".join(lines))
    return [*lines, f"pruning: written to {out / 'pruning.md'}"]
