"""Parameter importances that do not mislead on a conditional search space.

Asked for all parameters, Optuna 5's default evaluator (PED-ANOVA) ranks a conditional one, such
as `focal_gamma` (set only when loss=focal), across all trials, the trials without it forming an
"inactive" regime: on a real study it came first although only a few focal trials had it. Here the
global ranking covers only the parameters every completed trial has, and each conditional one is
ranked within the trials that have it, labelled with that scope ("loss=focal", "penalty!=none").
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable
from dataclasses import dataclass

import optuna
from optuna.distributions import CategoricalDistribution
from optuna.exceptions import ExperimentalWarning
from optuna.trial import FrozenTrial, TrialState

from search.core.errors import first_line

ALL = "all trials"
MIN_TRIALS = 2  # fewer and Optuna can only call the parameters equally important

Target = Callable[[FrozenTrial], float] | None


@dataclass(frozen=True)
class Importance:
    parameter: str
    importance: float
    scope: str  # ALL, or the condition under which the parameter exists ("loss=focal")
    trials: int  # completed trials it was evaluated on


def completed(study: optuna.Study, target: Target = None) -> list[FrozenTrial]:
    """The completed trials Optuna's evaluator uses: those whose target is finite."""
    return [t for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
            if (math.isfinite(target(t)) if target is not None
                else all(math.isfinite(v) for v in t.values))]


def global_params(study: optuna.Study, target: Target = None) -> list[str]:
    """The parameters every completed trial has (e.g. for plot_param_importances' `params=`)."""
    trials = completed(study, target)
    return sorted(set.intersection(*(set(t.params) for t in trials))) if trials else []


def param_importances(study: optuna.Study, target: Target = None,
                      ) -> tuple[list[Importance], list[str]]:
    """Importances ranked globally, then per conditional parameter within its scope; and notes.

    First the parameters every completed trial has, ranked over all completed trials (summing to
    1, as Optuna's do). Then each conditional parameter (one only some completed trials have),
    evaluated in an in-memory copy of the study holding just the trials that have it, together
    with every other parameter that all those trials have and that varies among them; its number
    is its share there: how much of the variation among, say, the focal trials it explains, not
    comparable with the global numbers. Parameters set in exactly the same trials (distill_*)
    are evaluated together. `target` goes to Optuna unchanged (PED-ANOVA explains what makes it
    *low*). Notes: Optuna's warnings and errors, once each (followed by "(in: SCOPES)" when not
    from the global ranking alone), and the parameters too few trials have. Fewer than 2
    completed trials: ([], []).
    """
    trials = completed(study, target)
    if len(trials) < MIN_TRIALS:
        return [], []
    notes: dict[str, dict[str, None]] = {}  # message -> the scopes it came from
    common = global_params(study, target)
    rows = [Importance(name, value, ALL, len(trials))
            for name, value in _evaluate(study, common, target, ALL, notes).items()]
    groups: dict[tuple[int, ...], list[str]] = {}  # the trials a parameter is in -> parameters
    for name in sorted({name for t in trials for name in t.params} - set(common)):
        groups.setdefault(tuple(t.number for t in trials if name in t.params), []).append(name)
    for numbers, names in sorted(groups.items(), key=lambda item: -len(item[0])):
        members = set(numbers)
        having = [t for t in trials if t.number in members]
        if len(having) < MIN_TRIALS:
            notes.update((f"{name}: only {len(having)} completed trial has it "
                          f"(needs {MIN_TRIALS}): not ranked", {}) for name in names)
            continue
        scope = condition(names[0], trials)
        sub = _sub_study(study, having)
        varying = [p for p in global_params(sub, target)
                   if p in names or len({repr(t.params[p]) for t in having}) > 1]
        found = _evaluate(sub, varying, target, scope, notes)
        rows += sorted((Importance(name, found[name], scope, len(having))
                        for name in names if name in found), key=lambda r: -r.importance)
    return rows, [message if set(scopes) <= {ALL} else f"{message} (in: {', '.join(scopes)})"
                  for message, scopes in notes.items()]


def condition(name: str, trials: list[FrozenTrial]) -> str:
    """When the trials have `name`, as "c=v" (exactly when categorical c is v), "c!=w" (exactly
    when it is not w), else "where set"."""
    having = [t for t in trials if name in t.params]
    lacking = [t for t in trials if name not in t.params]
    found = []
    for c in sorted(set.intersection(*(set(t.params) for t in having)) - {name}):
        if not all(isinstance(t.distributions[c], CategoricalDistribution) for t in having):
            continue
        inside = {repr(t.params[c]): t.params[c] for t in having}
        outside = {repr(t.params[c]): t.params[c] for t in lacking if c in t.params}
        if not outside or inside.keys() & outside.keys():
            continue  # c does not tell the trials with `name` from those without
        if len(inside) == 1:
            found.append((0, f"{c}={next(iter(inside.values()))}"))
        elif len(outside) == 1:
            found.append((1, f"{c}!={next(iter(outside.values()))}"))
    return min(found)[1] if found else "where set"


def _sub_study(study: optuna.Study, trials: list[FrozenTrial]) -> optuna.Study:
    verbosity = optuna.logging.get_verbosity()
    optuna.logging.set_verbosity(optuna.logging.WARNING)  # no "A new study created" line
    try:
        sub = optuna.create_study(directions=study.directions)
    finally:
        optuna.logging.set_verbosity(verbosity)
    sub.add_trials(trials)
    return sub


def _evaluate(study: optuna.Study, params: list[str], target: Target, scope: str,
              notes: dict[str, dict[str, None]]) -> dict[str, float]:
    """Optuna's importances of `params`; its warnings and errors go to `notes`, once each."""
    if not params:
        return {}
    found: dict[str, float] = {}
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            found = optuna.importance.get_param_importances(study, params=params, target=target)
        except (ValueError, RuntimeError) as e:
            notes.setdefault(first_line(e), {})[scope] = None
    for w in caught:  # what Optuna says about their reliability
        if not (issubclass(w.category, ExperimentalWarning) or "low `target`" in str(w.message)):
            notes.setdefault(first_line(w.message), {})[scope] = None
    return {name: float(value) for name, value in found.items()}

