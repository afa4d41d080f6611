"""Warm starts: a study's best configurations, exported as JSON and enqueued into another study.

The file is a JSON list of parameter dicts, best first (what `search.report --export-best`
writes). Enqueued configurations are Optuna's own fixed parameters (`Study.enqueue_trial`):
the sampler draws whatever a configuration leaves out, and `skip_if_exists` keeps a resumed
search from enqueueing them twice.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import optuna
from optuna.distributions import (
    BaseDistribution,
    CategoricalDistribution,
    FloatDistribution,
    IntDistribution,
)
from optuna.study import StudyDirection
from optuna.trial import FrozenTrial, TrialState

from search.core.errors import UsageError, first_line

SCALARS = (str, int, float, bool, type(None))  # Optuna's categorical choice types
DEFAULT_BEST = 5  # configurations --enqueue-from takes when it names no K
OUTSIDE = object()  # what _inside says of a value outside a distribution (None is a choice)


def best_configurations(study: optuna.Study, k: int) -> list[dict[str, Any]]:
    """The params of the study's `k` best COMPLETE trials, best first, without repeats.

    Single objective: by value in the study's direction. Multi-objective (no single best):
    the Pareto front, ordered by its first objective, as search.report shows it.
    """
    if k < 1:
        raise ValueError(f"k must be a positive integer, got {k}")
    maximize = study.directions[0] == StudyDirection.MAXIMIZE
    trials: list[FrozenTrial] = (
        study.best_trials if len(study.directions) > 1
        else study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)))
    # Ties keep the earlier trial first (sorted is stable; trials come by number).
    ranked = sorted(trials, key=lambda t: -t.values[0] if maximize else t.values[0])
    configs: list[dict[str, Any]] = []
    seen: set[str] = set()
    for trial in ranked:
        key = json.dumps(trial.params, sort_keys=True, default=str)
        if trial.params and key not in seen:  # the same params twice warm-start nothing new
            seen.add(key)
            configs.append(dict(trial.params))
            if len(configs) == k:
                break
    return configs


def export_best(study: optuna.Study, k: int, path: str | Path) -> list[dict[str, Any]]:
    """Write the `k` best configurations to `path` as JSON; returns them."""
    configs = best_configurations(study, k)
    if not configs:
        raise UsageError(f"study {study.study_name!r} has no completed trial: no configuration "
                         f"to write to {path}")
    target = Path(path)
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(json.dumps(configs, indent=2) + "\n")
    except OSError as e:
        raise UsageError(f"cannot write {path} ({e.strerror or first_line(e)})") from None
    return configs


def read_json(path: str | Path, *, what: str = "configurations") -> Any:
    """What the JSON file `path` holds; a file that cannot be read, or is not JSON, is one
    UsageError line (`what` it was to hold: "cannot read configurations from PATH")."""
    try:
        text = Path(path).read_bytes()  # json decodes it: bytes that are not text are bad JSON
    except OSError as e:
        raise UsageError(f"cannot read {what} from {path} "
                         f"({e.strerror or first_line(e)})") from None
    try:
        return json.loads(text)
    except ValueError as e:  # JSONDecodeError, or bytes that are not UTF-8
        raise UsageError(f"{path} is not JSON ({first_line(e)})") from None


def check_values(path: str | Path, where: str, config: Mapping[str, Any]) -> None:
    """One UsageError line for a parameter of `config` (`where` in `path`: "entry 3") whose
    value is not a number, string, boolean or null."""
    for name, value in config.items():  # JSON keys are strings: the values may not be
        if not isinstance(value, SCALARS):
            raise UsageError(f"{path}: {where}, parameter {name!r} is a "
                             f"{type(value).__name__}, not a number, string, boolean or null")


def read_configurations(path: str | Path) -> list[dict[str, Any]]:
    """The parameter dicts in the JSON file `path`; any problem is one UsageError line."""
    data = read_json(path)
    expected = "a JSON list of parameter objects, as search.report --export-best writes"
    if not isinstance(data, list) or not data:
        raise UsageError(f"{path} holds no configuration: expected {expected}")
    for i, config in enumerate(data):
        if not isinstance(config, dict):
            raise UsageError(f"{path}: entry {i} is a {type(config).__name__}, not a parameter "
                             f"object: expected {expected}")
        check_values(path, f"entry {i}", config)
    return data


@dataclass(frozen=True)
class Applicable:
    """What of a set of configurations a study's space can take."""

    configs: list[dict[str, Any]]
    dropped: dict[str, int] = field(default_factory=dict)  # parameter -> values left out
    note: str | None = None  # one line saying what was left out, for the CLI; None if nothing


def applicable(configs: Iterable[Mapping[str, Any]],
               distributions: Mapping[str, BaseDistribution], *, source: str) -> Applicable:
    """Each configuration reduced to the parameters of `distributions` with a value inside
    them (a value Optuna would take as a fixed parameter, but out of range, is left out: Optuna
    only warns and uses it); configurations left empty are dropped.

    Raises UsageError when no configuration keeps a parameter.
    """
    configs = list(configs)
    kept: list[dict[str, Any]] = []
    dropped: dict[str, int] = {}
    unknown: set[str] = set()
    for config in configs:
        reduced = {}
        for name, value in config.items():
            distribution = distributions.get(name)
            inside = OUTSIDE if distribution is None else _inside(distribution, value)
            if inside is OUTSIDE:
                dropped[name] = dropped.get(name, 0) + 1
                if distribution is None:
                    unknown.add(name)
            else:
                reduced[name] = inside
        if reduced:
            kept.append(reduced)
    space = ", ".join(sorted(distributions)) or "none"
    if not kept:
        if all(name in unknown for name in dropped):
            raise UsageError(f"none of the {len(configs)} configurations from {source} has a "
                             f"parameter of this study's space; its parameters are {space}")
        raise UsageError(f"none of the {len(configs)} configurations from {source} has a value "
                         f"inside this study's space (outside it: "
                         f"{', '.join(sorted(set(dropped) - unknown))}); its parameters are "
                         f"{space}")
    parts = [f"{name} ({count}x, {'not in this space' if name in unknown else 'outside it'})"
             for name, count in sorted(dropped.items())]
    note = None
    if parts or len(kept) < len(configs):
        note = (f"warm start: {len(kept)} of {len(configs)} configurations from {source} apply"
                + (f"; left out: {', '.join(parts)}" if parts else ""))
    return Applicable(kept, dropped, note)


def enqueue(study: optuna.Study, configs: Iterable[Mapping[str, Any]]) -> int:
    """Enqueue each configuration as a trial's fixed parameters; returns how many were new.

    A configuration already enqueued or tried (same parameters) is skipped, by Optuna. The
    count is the study's trials before and after: exact unless another process adds trials to
    the study meanwhile.
    """
    before = len(study.get_trials(deepcopy=False))
    for config in configs:
        study.enqueue_trial(dict(config), skip_if_exists=True)
    return len(study.get_trials(deepcopy=False)) - before


def _inside(distribution: BaseDistribution, value: Any) -> Any:
    """`value` as the distribution's own type when it lies inside it, else OUTSIDE."""
    if isinstance(distribution, (FloatDistribution, IntDistribution)) and (
            isinstance(value, bool) or not isinstance(value, (int, float))):
        return OUTSIDE  # float("0.1") and float(True) would pass Optuna's own conversion
    if isinstance(value, float) and not math.isfinite(value):
        return OUTSIDE
    try:
        internal = distribution.to_internal_repr(value)
    except (ValueError, TypeError):  # a categorical value not among the choices
        return OUTSIDE
    if not distribution._contains(internal):  # Optuna's own test of a fixed parameter
        return OUTSIDE
    external = distribution.to_external_repr(internal)  # 3.0 for an int parameter: 3
    if isinstance(distribution, CategoricalDistribution) and (
            isinstance(value, bool) != isinstance(external, bool)):
        return OUTSIDE  # Optuna finds choice 1 for true (1 == True in Python)
    return external


def gather(*, enqueue_from: str | None, enqueue: str | Path | None, sampler: str,
           storage: str | None, default_storage: str,
           space: Callable[[], Mapping[str, BaseDistribution]]) -> Applicable | None:
    """What `--enqueue-from STUDY[:K]` (in `storage`, default this study's) and `--enqueue
    FILE` ask to try first, reduced to the parameters of `space()` (called only then); None
    when neither is given. Bad input is one UsageError line."""
    if storage and not enqueue_from:
        raise UsageError("--enqueue-storage goes with --enqueue-from STUDY")
    if sampler == "grid" and (enqueue_from or enqueue):
        raise UsageError("--enqueue-from and --enqueue do not apply to --sampler grid: it runs "
                         "the grid's points and nothing else")
    configs: list[dict[str, Any]] = []
    sources = []
    if enqueue_from:
        from search.core.urls import mask_url
        from search.storage.reading import load  # reads without creating anything

        source, _, count = enqueue_from.rpartition(":")
        if not (source and count.isdigit() and int(count) > 0):
            source, count = enqueue_from, str(DEFAULT_BEST)
        other = storage or default_storage
        best = best_configurations(load(other, source, source), int(count))
        if not best:
            raise UsageError(f"study {source!r} in {mask_url(other)} has no completed trial to "
                             "warm-start from")
        configs += best
        sources.append(f"study {source!r}")
    if enqueue:
        configs += read_configurations(enqueue)
        sources.append(str(enqueue))
    if not configs:
        return None
    return applicable(configs, space(), source=" and ".join(sources))
