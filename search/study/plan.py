"""A search's plan: what the options and the stored study ask for, decided before anything runs.

`plan` is pure: it reads the options, the study's space and what its storage already holds
(attributes, number of trials) and returns a frozen `Plan`: the study's name and fixed settings,
the metrics it optimizes, the narrowing, grid and balance, the budget, the recipes it runs
first, and the attributes the study is to hold. Opening storages, loading data, creating the
Optuna study and its MLflow run follow from it (search.execution.session).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

import spaces
from search.core import names
from search.core.errors import UsageError
from search.core.urls import mask_url
from search.study import balance as balance_module
from search.study import grid as grid_module
from search.study import narrowing as narrowing_module
from search.study import recipes as recipes_module
from search.study.optuna_study import OBJECTIVES
from search.study.settings import RESOLUTION_SEARCH, StudySettings, reconcile


@dataclass(frozen=True)
class SearchOptions:
    """What a search is asked to do: search.run's options, typed (the CLI builds this record;
    the benchmarks and tests build it too). See `search.execution.session.open_search` for what
    they mean."""

    study: str
    name: str | None = None
    storage: str | None = None
    tracking_uri: str | None = None
    trials: int | None = None
    epochs: int | None = None
    sampler: str = "tpe"
    pruner: str = "hyperband"
    seed: int | None = None
    device: str = "auto"
    data_dir: str | Path | None = None
    backbone: str | None = None
    weights: str | Path | None = None
    pretrained: bool = True
    resolution: int | str | None = None
    compile: bool = False
    heartbeat: int = 30
    checkpoint_every: float = 30.0
    objectives: Sequence[str] | None = None
    teacher: str | None = None
    teacher_arch: str | None = None
    fix: Sequence[tuple[str, str]] = ()  # --fix NAME=VALUE, as (name, value text)
    choices: Sequence[tuple[str, str]] = ()  # --choices NAME=A,B, as (name, "A,B")
    grid: Sequence[tuple[str, str]] = ()  # --grid NAME=A,B, with sampler "grid"
    enqueue_from: str | None = None  # STUDY[:K]: warm start from another study's best
    enqueue_storage: str | None = None  # that study's storage (default: this one's)
    enqueue: str | Path | None = None  # a JSON file of configurations to try first
    balance: str | None = None  # "loss" or "penalty": every family the same number of trials
    time_scale: float | None = None  # a simulating study's sleep per simulated second
    recipes: str | None = None  # --recipes: "none" or NAME,NAME (None: all the study declares)
    recipe_files: Sequence[str | Path] = ()  # --recipe FILE.json: the user's own recipes
    race: str | None = None  # --race K,R or "none" (None: the default race)
    # How this process takes part, set by search.run rather than asked for by the user.
    load_device: str | None = None
    owner: bool = True
    worker: int | None = None


class Stored(NamedTuple):
    """What the storage already holds of the study: its attributes (None: a new study) and its
    number of trials."""

    attrs: Mapping[str, Any] | None
    trials: int


@dataclass(frozen=True)
class Plan:
    name: str
    seed: int
    fixed: StudySettings  # the settings the study keeps for its life
    settings: spaces.Settings  # what every trial gets of them
    metrics: tuple[str, ...]  # the values a trial returns
    directions: list[str]
    narrowing: narrowing_module.Narrowing
    grid: grid_module.Grid | None
    balance: balance_module.Balance | None
    budget: int
    attrs: dict[str, Any]  # the study's user attributes, in the order they are set
    notes: tuple[str, ...] = ()  # what the command tells its user about the plan
    # The recipes a new study runs as its first trials, in order (search.study.recipes).
    recipes: tuple[recipes_module.Recipe, ...] = ()


def plan(options: SearchOptions, spec: spaces.Study, stored: Stored, *,
         reference: str | None = None,
         own_recipes: Sequence[recipes_module.Recipe] = ()) -> Plan:
    """The search `options` ask of study `spec`, given what its storage holds: no I/O.
    `reference`: the file or module:NAME the space was found by, kept to find it again.
    `own_recipes`: the recipes of `options.recipe_files`, as `recipes.read_files` read them."""
    if options.recipe_files and not own_recipes and options.worker is None:
        raise ValueError("plan() reads no file: give it own_recipes=recipes.read_files("
                         "options.recipe_files)")
    teacher, weights = options.teacher, options.weights
    name = study_name(options, spec)
    seed = spec.seed if options.seed is None else options.seed
    fixed = _settings(options, spec, stored, name=name, seed=seed)
    metrics, directions = objectives(spec, fixed.objectives, options.sampler)
    if fixed.init == "file" and weights is None:
        raise UsageError(f"study {name!r} was created with a weights file: give --weights PATH "
                         "again to resume it")
    if fixed.teacher and not teacher:
        raise UsageError(f"study {name!r} distils from teacher {fixed.teacher}: give "
                         "--teacher (and --teacher-arch) again to resume it")
    settings = fixed.trial_settings()
    narrowing = narrowing_module.for_study(spec, settings, stored.attrs, stored.trials,
                                           fix=options.fix, choices=options.choices, name=name)
    grid = grid_module.for_study(spec, settings, narrowing, stored.attrs,
                                 sampler=options.sampler, asked=options.grid,
                                 trials=options.trials, name=name)
    balance = balance_module.for_study(spec, settings, narrowing, stored.attrs, stored.trials,
                                       asked=options.balance, grid=grid is not None, name=name)
    attrs = fixed.attrs(image=spec.backbone is not None)  # search.refit reads them back
    if reference:
        attrs[names.REFERENCE] = reference
    attrs.update(narrowing=narrowing.asked(),
                 choices={k: list(v) for k, v in narrowing.pinned.items()})
    budget = options.trials or (stored.attrs or {}).get(names.BUDGET) or spec.trials
    notes = []
    if balance is not None:
        budget = balance_module.budget(balance, budget)
        attrs[names.BALANCE] = balance.param
        each = balance.per_family(budget)
        notes.append(f"balanced over {len(balance.families)} {balance.param} families: "
                     f"{each} trial{'s' * (each != 1)} each (budget {budget})")
    if grid is not None:
        budget = len(grid.points)
        attrs[names.GRID] = grid.axes
    attrs[names.BUDGET] = budget
    # A launcher's workers queue nothing: the launcher did, before they started.
    recipes = recipes_module.for_study(
        spec, settings, narrowing, asked=options.recipes, own=own_recipes,
        sampler=options.sampler, new=not stored.trials and options.worker is None,
        budget=budget)
    notes += recipes.notes
    return Plan(name=name, seed=seed, fixed=fixed, settings=settings, metrics=metrics,
                directions=directions, narrowing=narrowing, grid=grid, balance=balance,
                budget=budget, attrs=attrs,
                notes=tuple(notes) if options.worker is None else (), recipes=recipes.run)


def study_name(options: SearchOptions, spec: spaces.Study) -> str:
    """The Optuna study's name: --name, else the space's. A teacher changes the loss choices,
    which an Optuna study cannot change: a distilling study has its own name."""
    return options.name or (f"{spec.name}-distill" if options.teacher else spec.name)


def _settings(options: SearchOptions, spec: spaces.Study, stored: Stored, *, name: str,
              seed: int) -> StudySettings:
    """The study's fixed settings: those it was created with, reconciled with those asked."""
    objectives_asked = options.objectives
    requested: dict[str, Any] = {
        "epochs": options.epochs,
        "objectives": ",".join(objectives_asked) if objectives_asked else None,
        "teacher": mask_url(options.teacher) if options.teacher else None}
    defaults: dict[str, Any] = {"epochs": spec.epochs, "objectives": None, "teacher": None}
    if spec.backbone is not None:
        weights, pretrained = options.weights, options.pretrained
        requested.update(backbone=options.backbone, resolution=options.resolution,
                         init=initial_weights(weights, pretrained)
                         if weights or not pretrained else None)
        defaults.update(backbone=spec.backbone, init="imagenet",
                        resolution=RESOLUTION_SEARCH if spec.resolution is None
                        else spec.resolution)
    return StudySettings.from_attrs(
        {**reconcile(stored.attrs, requested, defaults, name=name, trials=stored.trials),
         names.SPACE: spec.name, "seed": seed, "teacher_arch": options.teacher_arch}, spec)


def objectives(spec: spaces.Study, asked: Sequence[str],
               sampler: str) -> tuple[tuple[str, ...], list[str]]:
    """The metrics a trial returns and their directions."""
    if not asked:
        return (spec.metric,), [spec.direction]
    unknown = [n for n in asked if n not in OBJECTIVES]
    if unknown or len(set(asked)) != len(asked):
        raise UsageError(f"--objectives takes distinct names among {', '.join(OBJECTIVES)}, "
                         f"got {','.join(asked)}")
    if len(asked) > 1 and sampler == "cmaes":
        raise UsageError("the cmaes sampler optimizes one objective: use tpe, random or gp "
                         "with several --objectives")
    return tuple(OBJECTIVES[n][0] for n in asked), [OBJECTIVES[n][1] for n in asked]


def initial_weights(weights: str | Path | None, pretrained: bool) -> str:
    """Where a backbone's initial weights come from, as a study setting."""
    if weights is not None:
        return "file"
    return "imagenet" if pretrained else "random"
