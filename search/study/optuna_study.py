"""Samplers, pruners and the Optuna study: chosen by name, seeded, created once and resumed."""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Sequence

import optuna
from optuna.pruners import BasePruner
from optuna.samplers import BaseSampler
from optuna.storages import BaseStorage
from optuna.trial import TrialState

from search.study.rungs import GatedHyperband, GatedSuccessiveHalving

FINISHED = (TrialState.COMPLETE, TrialState.PRUNED)


def _tpe(seed: int) -> BaseSampler:
    # multivariate + group: the conditional parameters (huber_delta only under huber) are modelled
    # jointly with the choice that enables them (Falkner et al. 2018, as in Optuna's docs).
    # constant_liar: a worker counts the trials others are running as bad results, so that
    # parallel workers do not all sample next to the same good point.
    return optuna.samplers.TPESampler(seed=seed, multivariate=True, group=True,
                                      constant_liar=True)


SAMPLERS: dict[str, Callable[[int], BaseSampler]] = {
    "tpe": _tpe,
    "random": lambda seed: optuna.samplers.RandomSampler(seed=seed),
    "gp": lambda seed: optuna.samplers.GPSampler(seed=seed),
    # CMA-ES models the continuous parameters; the categorical ones fall back to random.
    "cmaes": lambda seed: optuna.samplers.CmaEsSampler(seed=seed, warn_independent_sampling=False),
    # Every point of --grid, queued once (search.study.grid): nothing is left to sample.
    "grid": lambda seed: optuna.samplers.RandomSampler(seed=seed),
}


# Hyperband's first rung, in epochs: chosen by `python -m search.bench --only pruning`, which
# compares pruners at equal epoch budgets (the README's table).
HYPERBAND_MIN_RESOURCE = 3


def hyperband(epochs: int, min_resource: int = HYPERBAND_MIN_RESOURCE) -> BasePruner:
    """Li et al. 2018; resources are epochs, the brackets span `min_resource` epochs (at most
    the whole run) to the full run. Asked only at its rung steps (search.study.rungs)."""
    return GatedHyperband(min_resource=min(min_resource, epochs), max_resource=epochs,
                          reduction_factor=3)


def _pruner(name: str, epochs: int) -> BasePruner:
    if name == "hyperband":
        return hyperband(epochs)
    if name == "asha":
        return GatedSuccessiveHalving(min_resource=1, reduction_factor=3)
    warmup = max(1, epochs // 5)  # the first epochs of every trial are too noisy to judge
    if name == "median":
        return optuna.pruners.MedianPruner(n_startup_trials=5, n_warmup_steps=warmup)
    if name == "percentile":
        return optuna.pruners.PercentilePruner(25.0, n_startup_trials=5, n_warmup_steps=warmup)
    return optuna.pruners.NopPruner()


PRUNERS = ("hyperband", "median", "asha", "percentile", "none")


def make_sampler(name: str, seed: int) -> BaseSampler:
    if name not in SAMPLERS:
        raise ValueError(f"unknown sampler {name!r}; known samplers: {', '.join(SAMPLERS)}")
    return SAMPLERS[name](seed)


def make_pruner(name: str, *, epochs: int) -> BasePruner:
    if name not in PRUNERS:
        raise ValueError(f"unknown pruner {name!r}; known pruners: {', '.join(PRUNERS)}")
    return _pruner(name, epochs)


# Objectives a study can optimize, with the validation metric and its direction.
OBJECTIVES: dict[str, tuple[str, str]] = {
    "accuracy": ("val_accuracy", "maximize"),
    "ece": ("val_ece", "minimize"),
    "cross_entropy": ("val_cross_entropy", "minimize"),
    "f1": ("val_macro_f1", "maximize"),
}


def open_study(
    *, name: str, storage: BaseStorage, directions: Sequence[str], sampler: BaseSampler,
    pruner: BasePruner,
) -> optuna.Study:
    """The study called `name` in `storage`, created the first time (resumed after that)."""
    return optuna.create_study(
        study_name=name, storage=storage,
        directions=[optuna.study.StudyDirection[d.upper()] for d in directions],
        sampler=sampler, pruner=pruner, load_if_exists=True,
    )


def state_counts(study: optuna.Study) -> Counter[str]:
    trials = study.get_trials(deepcopy=False)
    return Counter(t.state.name for t in trials)


def finished_count(study: optuna.Study) -> int:
    return len(study.get_trials(deepcopy=False, states=FINISHED))


def committed_count(study: optuna.Study) -> int:
    """Trials finished or running: what the budget has already been given to."""
    return len(study.get_trials(deepcopy=False, states=(*FINISHED, TrialState.RUNNING)))




class OverBudget(Exception):
    """A trial started after the budget was given out (see `over_budget`)."""


def over_budget(study: optuna.Study, number: int, budget: int) -> bool:
    """Whether trial `number` was created after the budget was given out.

    Workers that look at the count at the same moment each start a trial (the look and
    Optuna's creation of a trial are not one atomic step): 64 workers finished 258 trials of
    256. Trial numbers are atomic, so the trial with the lower number keeps its place and the
    other ends at once, before anything is sampled or tracked.
    """
    if number < budget:  # fewer trials than that were created before it: no read needed
        return False
    states = (*FINISHED, TrialState.RUNNING)
    return sum(t.number < number for t in study.get_trials(deepcopy=False, states=states)) \
        >= budget


class Budget:
    """A study callback: start no trial once the finished and running trials reach `budget`.

    Optuna's MaxTrialsCallback counts finished trials only, so with K workers every worker
    running a trial when the budget is met finishes one more (6 workers, --trials 36: 41).
    Counting the running ones too, `--trials N` finishes N trials unless some fail (a failed
    one does not count: a worker still going runs another, or its queued retry).
    """

    def __init__(self, budget: int) -> None:
        self.budget = budget

    def __call__(self, study: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
        if committed_count(study) >= self.budget:
            study.stop()
