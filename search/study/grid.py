"""Grid search: `--sampler grid --grid NAME=V1,V2 ...`, every point run exactly once.

Optuna's GridSampler can run a point twice when workers ask at once (it picks among the points
no trial holds yet, and two workers can pick the same one). Here each point is a complete
configuration (the grid's values, `--fix`, and the study's defaults for the rest) queued once in
the storage, when the study is created, by the process that created it: workers take queued
trials one at a time, and the storage's pop is atomic (Optuna's own enqueue_trial). A worker
that finds the queue empty starts nothing.
"""

from __future__ import annotations

import itertools
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, cast

import optuna
from optuna.distributions import BaseDistribution
from optuna.trial import TrialState

from search.core import names
from search.core.errors import UsageError
from search.core.names import (
    EXHAUSTED,
    GRID,  # noqa: F401 (re-exported)
)
from search.study import completion
from search.study.narrowing import (
    Narrowing,
    convert,
    describe_distribution,
    parameters,
)

if TYPE_CHECKING:
    import spaces



class GridDone(Exception):
    """A worker asked for a point and none was left: its search ends."""


def _no_default(name: str, distribution: BaseDistribution) -> Any:
    shown = describe_distribution(distribution)
    raise UsageError(f"--sampler grid: {name} ({shown}) has no default in this "
                     f"study's space; give it with --fix {name}=VALUE or --grid "
                     f"{name}=A,B")


def points(spec: spaces.Study, settings: Any, narrowing: Narrowing,
           grid: Sequence[tuple[str, str]]) -> list[dict[str, Any]]:
    """The grid's points as complete parameter sets, in order, each once; bad input is one
    UsageError line (an unknown or fixed parameter, a value outside the space, a parameter no
    point reaches, a parameter with no value)."""
    if not grid:
        raise UsageError("--sampler grid needs the grid: --grid NAME=V1,V2 (repeatable)")
    space = narrowing.apply(spec.space)
    known = parameters(space, settings)
    axes: dict[str, list[Any]] = {}
    for name, text in grid:
        if name in axes or name in narrowing.fixed:
            raise UsageError(f"--grid {name}: {name} is already given; give each parameter "
                             "once")
        if name not in known:
            if name in parameters(Narrowing(pinned=narrowing.pinned).apply(spec.space),
                                  settings):
                raise UsageError(f"--grid {name}: {name} is never searched with --fix "
                                 f"{narrowing.describe()} (it belongs to another choice)")
            raise UsageError(f"--grid {name}: study {spec.name!r} has no parameter {name!r}; "
                             f"its parameters are {', '.join(known)}")
        values = [convert(name, t.strip(), known[name], flag="--grid")
                  for t in text.split(",") if t.strip()]
        axes[name] = list(dict.fromkeys(values))  # in the order given, each once
    defaults = completion.defaults(spec)
    found: list[dict[str, Any]] = []
    reached: set[str] = set()
    for combination in itertools.product(*axes.values()):
        given = {**narrowing.fixed, **dict(zip(axes, combination, strict=True))}
        completer = completion.Completer(given, defaults, missing=_no_default)
        space(cast(optuna.Trial, completer), settings)
        reached.update(completer.params)
        if completer.params not in found:  # a value under a choice this point does not take
            found.append(completer.params)
    for name in axes:
        if name not in reached:
            raise UsageError(f"--grid {name}: {name} is never searched on this grid (it belongs "
                             "to a choice the grid or --fix rules out)")
    return found


def enqueue(study: optuna.Study, grid_points: Sequence[Mapping[str, Any]]) -> int:
    """Queue every point that has no trial yet, or only failed ones; returns how many."""
    taken = [t.params for t in study.get_trials(deepcopy=False) if t.state != TrialState.FAIL]
    queued = 0
    for point in grid_points:
        if dict(point) not in taken:
            study.enqueue_trial(dict(point))
            queued += 1
    return queued


def only_queued(study: optuna.Study) -> None:
    """Make the study's `ask` start queued points only: a trial it creates afresh (another
    worker took the last point between our look and our ask) is failed as EXHAUSTED, and
    GridDone ends this worker's search."""
    ask = study.ask

    def ask_queued(fixed_distributions: dict[str, Any] | None = None) -> optuna.Trial:
        if not study.get_trials(deepcopy=False, states=(TrialState.WAITING,)):
            raise GridDone
        trial = ask(fixed_distributions)
        if "fixed_params" not in trial.study._storage.get_trial_system_attrs(trial._trial_id):
            trial.set_user_attr(names.FAIL_REASON, EXHAUSTED)
            study.tell(trial, state=TrialState.FAIL)
            raise GridDone
        return trial

    study.ask = ask_queued  # type: ignore[method-assign]


@dataclass(frozen=True)
class Grid:
    axes: dict[str, list[str]]  # as asked (and stored): each parameter's values, as text
    points: list[dict[str, Any]]  # complete configurations, each once


def for_study(spec: spaces.Study, settings: Any, narrowing: Narrowing,
              stored: Mapping[str, Any] | None, *, sampler: str,
              asked: Sequence[tuple[str, str]], trials: int | None, name: str) -> Grid | None:
    """Study `name`'s grid (None unless `sampler` is grid): as asked, else as stored; options
    that contradict it, or a resume asked for another grid, are refused (one line)."""
    if sampler != "grid":
        if asked:
            raise UsageError("--grid goes with --sampler grid")
        return None
    if trials is not None:
        raise UsageError("--trials does not apply to --sampler grid: the budget is the grid's "
                         "size, every point once")
    kept = {k: [str(x) for x in v] for k, v in ((stored or {}).get(GRID) or {}).items()}
    axes = {k: v.split(",") for k, v in asked} or kept
    if kept and axes != kept:
        raise UsageError(f"study {name!r} was created with another grid: leave --grid out to "
                         "resume it, or give --name NEW to start another study")
    return Grid(axes, points(spec, settings, narrowing,
                             [(k, ",".join(v)) for k, v in axes.items()]))
