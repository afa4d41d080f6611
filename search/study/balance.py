"""Balanced searches: `--balance loss` (or `penalty`) gives every family the same trials.

TPE spends its budget where it first found good values, so a plain search leaves some loss
families with one or two pruned trials: their best is never found, and the loss-family table
compares what was explored rather than what works. A balanced search assigns each new trial a
family round-robin (the family with the fewest trials so far), and the study's sampler draws
the rest of the space. Pruning compares a trial within its family as well as across: a trial
is stopped only when the study's pruner stops it *and* it trails its own family's median at
that epoch, so each family's best is searched with the same budget.

The family is fixed the way Optuna's `enqueue_trial` fixes parameters (the trial's
`fixed_params`), after the trial is created: a trial's number is then known, and the family
follows from the trials numbered before it (see `assign`), so workers asking at the same moment
still take different families. Optuna has no sampler hook that could do this: a sampler cannot
fix one parameter of a multivariate TPE's joint draw.
"""

from __future__ import annotations

import math
from collections.abc import Container, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import optuna
from optuna.distributions import CategoricalDistribution
from optuna.pruners import BasePruner, HyperbandPruner, MedianPruner
from optuna.trial import FrozenTrial, TrialState

from search.core.errors import UsageError
from search.core.names import BALANCE  # noqa: F401 (re-exported)
from search.study.narrowing import Narrowing, parameters

if TYPE_CHECKING:
    import spaces

FAMILIES = ("loss", "penalty")  # what --balance takes
FIXED = "fixed_params"  # Optuna's own system attr for enqueued parameters


@dataclass(frozen=True)
class Balance:
    param: str  # "loss" or "penalty"
    families: tuple[Any, ...]  # its choices in this study, in the space's order

    def per_family(self, budget: int) -> int:
        return math.ceil(budget / len(self.families))


def family_of(trial: FrozenTrial, param: str) -> Any:
    """The trial's family: its parameter, else the value fixed for it (None: not yet known)."""
    if param in trial.params:
        return trial.params[param]
    return (trial.system_attrs.get(FIXED) or {}).get(param)


def assign(trials: Sequence[FrozenTrial], number: int, balance: Balance) -> Any:
    """Trial `number`'s family: walk the study's trials in number order (failed ones do not
    count: their retries carry their family), each taking its own family or, when it has none
    yet, the family with the fewest trials before it (ties: the space's order). Two workers
    that compute this for different trials agree on every trial numbered before both."""
    counts = dict.fromkeys(balance.families, 0)
    for trial in sorted(trials, key=lambda t: t.number):
        if trial.number > number:
            break
        if trial.state == TrialState.FAIL:
            continue
        fewest = min(balance.families, key=lambda f: counts[f])
        if trial.number == number:
            return fewest
        family = family_of(trial, balance.param)
        family = fewest if family is None else family
        if family in counts:  # (a warm start may bring a family outside --choices)
            counts[family] += 1
    raise ValueError(f"trial {number} is not in the study")


def round_robin(study: optuna.Study, balance: Balance) -> None:
    """Make the study's `ask` fix each new trial's family (a queued trial keeps its own)."""
    if getattr(study, "_balanced", False):
        return
    ask = study.ask

    def ask_balanced(fixed_distributions: dict[str, Any] | None = None) -> optuna.Trial:
        trial = ask(fixed_distributions)
        frozen = study._storage.get_trial(trial._trial_id)
        if family_of(frozen, balance.param) is None:
            family = assign(study.get_trials(deepcopy=False), frozen.number, balance)
            fixed = {**(frozen.system_attrs.get(FIXED) or {}), balance.param: family}
            study._storage.set_trial_system_attr(trial._trial_id, FIXED, fixed)
            trial._fixed_params = fixed  # read once, when Optuna made the Trial
        return trial

    study.ask = ask_balanced  # type: ignore[method-assign]
    study._balanced = True  # type: ignore[attr-defined]


class _Family:
    """The study as seen from one family: its trials only (what MedianPruner reads)."""

    def __init__(self, study: optuna.Study, param: str, family: Any) -> None:
        self._study, self._param, self._family = study, param, family

    @property
    def direction(self) -> optuna.study.StudyDirection:
        return self._study.direction

    def get_trials(self, deepcopy: bool = True,
                   states: Container[TrialState] | None = None) -> list[FrozenTrial]:
        return [t for t in self._study.get_trials(deepcopy=deepcopy, states=states)
                if t.params.get(self._param) == self._family]


class FamilyPruner(BasePruner):
    """Stop a trial when `across` (the study's pruner) stops it and it also trails the median
    of its family's completed trials at the same epoch. A family's first `startup` completed
    trials are never judged within it."""

    def __init__(self, across: BasePruner, param: str, *, startup: int = 2,
                 warmup: int = 1) -> None:
        self.across, self.param = across, param
        self.within = MedianPruner(n_startup_trials=startup, n_warmup_steps=warmup)

    def prune(self, study: optuna.Study, trial: FrozenTrial) -> bool:
        if not self.across.prune(study, trial):
            return False
        family = _Family(study, self.param, trial.params.get(self.param))
        return self.within.prune(family, trial)  # type: ignore[arg-type]  # duck-typed view


def for_study(spec: spaces.Study, settings: Any, narrowing: Narrowing,
              stored: Mapping[str, Any] | None, trials: int, *, asked: str | None,
              grid: bool, name: str) -> Balance | None:
    """Study `name`'s balance: as asked for a new study, else as stored; a resume that asks
    for another one is refused, as are a grid and a parameter with fewer than two choices."""
    kept = (stored or {}).get(BALANCE)
    if stored is not None and trials and asked is not None and asked != kept:
        was = f"--balance {kept}" if kept else "no --balance"
        raise UsageError(f"study {name!r} was created with {was}: leave --balance out to "
                         "resume it, or give --name NEW to start a balanced study")
    param = asked if asked is not None else kept if trials else None
    if param is None:
        return None
    if grid:
        raise UsageError("--balance and --sampler grid do not go together: a grid already "
                         "runs every point once")
    distribution = parameters(narrowing.apply(spec.space), settings).get(param)
    if not isinstance(distribution, CategoricalDistribution):
        raise UsageError(f"--balance {param}: study {spec.name!r} has no {param} choice to "
                         "balance")
    if len(distribution.choices) < 2:
        raise UsageError(f"--balance {param}: {param} is held to one family "
                         f"({narrowing.describe()}); balance it over its choices, or leave "
                         "--balance out")
    return Balance(param, tuple(distribution.choices))


class FamilyHyperband(FamilyPruner, HyperbandPruner):
    """A FamilyPruner around Hyperband, which Optuna still sees as Hyperband.

    Optuna gives a sampler one Hyperband bracket's trials (their budgets are alike) only when
    `isinstance(study.pruner, HyperbandPruner)`, and asks that pruner for the bracket through
    two methods; a plain wrapper left the samplers of a balanced study reading every bracket.
    The brackets are `across`'s: HyperbandPruner's own state is never set up here.
    """

    def __init__(self, across: HyperbandPruner, param: str, *, startup: int = 2,
                 warmup: int = 1) -> None:
        FamilyPruner.__init__(self, across, param, startup=startup, warmup=warmup)
        self.hyperband = across

    def _get_bracket_id(self, study: optuna.Study, trial: FrozenTrial) -> int:
        return self.hyperband._get_bracket_id(study, trial)

    def _create_bracket_study(self, study: optuna.Study, bracket_id: int) -> optuna.Study:
        return self.hyperband._create_bracket_study(study, bracket_id)


def pruner(across: BasePruner, balance: Balance | None, *, epochs: int) -> BasePruner:
    """The study's pruner, judged within families too when the study is balanced."""
    if balance is None or isinstance(across, optuna.pruners.NopPruner):
        return across
    if isinstance(across, HyperbandPruner):
        return FamilyHyperband(across, balance.param, warmup=max(1, epochs // 5))
    return FamilyPruner(across, balance.param, warmup=max(1, epochs // 5))


def budget(balance: Balance, asked: int) -> int:
    """The budget rounded up to the same number of trials for every family."""
    return balance.per_family(asked) * len(balance.families)
