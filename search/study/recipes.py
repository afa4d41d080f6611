"""Standard recipes: named configurations a new study runs as its first trials.

A study declares its recipes (`spaces.Study.recipes`: name -> parameters); `--recipes none` or
`--recipes NAME,NAME` chooses among them (default: all), and `--recipe FILE.json` adds the
user's own: a JSON object of parameters, named by the file's stem, or an object of such
objects by name. Each is completed to a configuration of the study's space as a grid's point
is (search.study.completion: the study's `defaults`, else TrialConfig's; a parameter with no
default inside its range is left to the sampler) and checked against the space. So the search
always has a known-good incumbent, which the race after the search measures the rest against.

Only a new study (no trials stored, and not a launcher's worker) runs them, queued before any
warm start (Optuna's `enqueue_trial`, the trial's user attribute `recipe` holding the name).
Bad input (an unknown name, a parameter the space does not have, a value outside it) is one
UsageError line; a recipe outside the space narrowed by `--fix` or `--choices` is left out
with a note. Pure: reading a recipe file is the only I/O (`read_files`).
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

import optuna
from optuna.distributions import BaseDistribution, CategoricalDistribution

from search.core.errors import UsageError
from search.study import completion
from search.study.narrowing import Narrowing, describe_distribution, parameters
from search.study.warmstart import OUTSIDE, _inside, check_values, read_json

if TYPE_CHECKING:
    import spaces

NONE = "none"  # --recipes none: no standard recipe
EXPECTED = ("a JSON object of parameters (the recipe is named by the file's stem), or an "
            "object of such objects by recipe name")


@dataclass(frozen=True)
class Recipe:
    name: str
    params: Mapping[str, Any]  # as enqueued: completed (see the module) once planned
    source: str | None = None  # the user's file it came from; None: the study declares it

    def where(self, study: str) -> str:
        """How an error names it: "--recipe FILE: recipe 'fast'" or "study 'digits', recipe
        'adamw'"."""
        return (f"--recipe {self.source}: recipe {self.name!r}" if self.source
                else f"study {study!r}, recipe {self.name!r}")


@dataclass(frozen=True)
class Recipes:
    """The recipes a search runs first, in order, and what to tell its user about them."""

    run: tuple[Recipe, ...] = ()
    notes: tuple[str, ...] = ()


def read_file(path: str | Path) -> list[Recipe]:
    """The recipes of one `--recipe` file; any problem is one UsageError line."""
    data = read_json(path, what="recipes")
    if not isinstance(data, dict) or not data:
        raise UsageError(f"{path} holds no recipe: expected {EXPECTED}")
    nested = [isinstance(v, dict) for v in data.values()]
    if all(nested):
        named = data
    elif any(nested):
        raise UsageError(f"{path} mixes parameters and recipes: expected {EXPECTED}")
    else:
        named = {Path(path).stem: data}
    found = []
    for name, params in named.items():
        if not params:
            raise UsageError(f"{path}: recipe {name!r} has no parameter: expected {EXPECTED}")
        check_values(path, f"recipe {name!r}", params)
        found.append(Recipe(name, dict(params), str(path)))
    return found


def read_files(paths: Sequence[str | Path]) -> list[Recipe]:
    """The user's recipes from every `--recipe` file, in order (not yet checked against a
    space: see `for_study`)."""
    return [recipe for path in paths for recipe in read_file(path)]


def chosen(spec: spaces.Study, asked: str | None) -> list[Recipe]:
    """The study's declared recipes that `--recipes` chooses (None: all; "none": none), in
    the order asked; an unknown name is one UsageError line listing the known ones."""
    declared = spec.recipes
    if asked is None:
        return [Recipe(name, dict(params)) for name, params in declared.items()]
    if asked.strip().lower() == NONE:
        return []
    wanted = list(dict.fromkeys(n.strip() for n in asked.split(",") if n.strip()))
    known = ", ".join(declared) if declared else "none declared"
    for name in wanted:
        if name not in declared:
            raise UsageError(f"--recipes {asked}: study {spec.name!r} has no recipe {name!r}; "
                             f"its recipes: {known} (or none; --recipe FILE.json adds your own)")
    if not wanted:
        raise UsageError(f"--recipes takes none or recipe names NAME,NAME; study {spec.name!r} "
                         f"declares: {known}")
    return [Recipe(name, dict(declared[name])) for name in wanted]


def _show(value: Any) -> str:
    return value if isinstance(value, str) else json.dumps(value)


class _Checked(completion.Completer):
    """A completer that takes a recipe's own value only inside the distribution the space
    asks it over (as that distribution's type), else raises a UsageError line."""

    def __init__(self, given: Mapping[str, Any], defaults: Mapping[str, Any], *,
                 where: str) -> None:
        super().__init__(given, defaults)
        self.where = where

    def choose(self, name: str, distribution: BaseDistribution) -> Any:
        if name not in self.given:
            return super().choose(name, distribution)
        value = _inside(distribution, self.given[name])
        if value is OUTSIDE:
            given = self.given[name]  # a string for a number: shown as the JSON it was
            shown = (_show(given) if isinstance(distribution, CategoricalDistribution)
                     else json.dumps(given))
            raise UsageError(f"{self.where}: {name}={shown} is outside the space: {name} is "
                             f"{describe_distribution(distribution)}")
        self.params[name] = value
        return value


class _Narrowed(completion.Completer):
    """A completer over the narrowed space that notes the first of the recipe's own values
    outside it (and runs on with it)."""

    outside: tuple[str, Any] | None = None

    def choose(self, name: str, distribution: BaseDistribution) -> Any:
        if name in self.given and self.outside is None and (
                _inside(distribution, self.given[name]) is OUTSIDE):
            self.outside = (name, self.given[name])
        return super().choose(name, distribution)


def complete(recipe: Recipe, spec: spaces.Study, settings: Any,
             narrowing: Narrowing) -> tuple[Recipe | None, str | None]:
    """`recipe` completed to a configuration of the study's space (see the module), or None
    with a note when it falls outside the space as `narrowing` narrows it. A parameter the
    space does not have, a value outside the space, or a parameter the recipe's own choices
    never reach is one UsageError line."""
    where = recipe.where(spec.name)
    base = Narrowing(pinned=narrowing.pinned).apply(spec.space)
    known = parameters(base, settings)
    for name in recipe.params:
        if name not in known:
            raise UsageError(f"{where}: study {spec.name!r} has no parameter {name!r}; its "
                             f"parameters are {', '.join(known)}")
    defaults = completion.defaults(spec)
    checked = _Checked(recipe.params, defaults, where=where)
    base(cast(optuna.Trial, checked), settings)
    for name in recipe.params:
        if name not in checked.params:
            held = ", ".join(f"{k}={_show(v)}" for k, v in checked.params.items()
                             if isinstance(known[k], CategoricalDistribution))
            raise UsageError(f"{where}: {name} is never searched with {held} (the recipe's "
                             "choices, else the study's defaults): it belongs to another choice")
    own = {k: v for k, v in checked.params.items() if k in recipe.params}
    # Over the narrowed space, a parameter the recipe leaves out takes --fix's value first.
    narrowed = _Narrowed(own, {**defaults, **narrowing.fixed})
    narrowing.apply(spec.space)(cast(optuna.Trial, narrowed), settings)
    if narrowed.outside is not None:
        name, value = narrowed.outside
        if name in narrowing.fixed:
            flag = f"--fix {name}={_show(narrowing.fixed[name])}"
        elif name in narrowing.choices:
            flag = f"--choices {name}={','.join(map(str, narrowing.choices[name]))}"
        else:
            flag = f"the study's choices of {name}"
        return None, f"recipe {recipe.name} left out: {name}={_show(value)} is outside {flag}"
    return Recipe(recipe.name, narrowed.params, recipe.source), None


def for_study(spec: spaces.Study, settings: Any, narrowing: Narrowing, *, asked: str | None,
              own: Sequence[Recipe], sampler: str, new: bool, budget: int) -> Recipes:
    """The recipes a search of `spec` runs first: those `--recipes` (`asked`) chooses among
    the study's, then the user's `own` (read by `read_files`), each completed and checked
    (`complete`); none unless the study is `new`, and none on a grid. What is left out, and
    why, comes back as notes; recipes beyond the `budget` are left out too."""
    explicit = bool(own) or (asked is not None and asked.strip().lower() != NONE)
    if sampler == "grid":
        return Recipes(notes=("recipes: --sampler grid runs the grid's points only, so no "
                              "recipe runs",) if explicit else ())
    candidates = [*chosen(spec, asked), *own]
    seen: dict[str, Recipe] = {}
    for recipe in candidates:
        if recipe.name in seen:
            first = seen[recipe.name]
            raise UsageError(f"{recipe.where(spec.name)}: {first.where(spec.name)} has the same "
                             "name; give each recipe its own name")
        seen[recipe.name] = recipe
    run: list[Recipe] = []
    notes: list[str] = []
    for recipe in candidates:
        done, note = complete(recipe, spec, settings, narrowing)
        if done is not None:
            run.append(done)
        elif note:
            notes.append(note)
    if not new:
        return Recipes(notes=("recipes: the study has trials already; recipes run only as a new "
                              "study's first trials",) if explicit else ())
    if len(run) > budget:
        left = [r.name for r in run[budget:]]
        notes.append(f"recipe{'s' * (len(left) != 1)} {', '.join(left)} left out: the budget "
                     f"of {budget} trial{'s' * (budget != 1)} goes to the recipes before "
                     f"{'them' if len(left) != 1 else 'it'}")
        run = run[:budget]
    return Recipes(tuple(run), tuple(notes))
