"""Hyperband and successive halving asked only at rung steps decide exactly as when asked at
every epoch, with far fewer questions (each question reads the storage)."""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np
import optuna
import pytest
from optuna.pruners import BasePruner

from search.study.optuna_study import make_pruner
from search.study.rungs import GatedHyperband, GatedSuccessiveHalving

EPOCHS = 20


def _count_calls(pruner: BasePruner) -> list[int]:
    calls = [0]
    prune = pruner.prune

    def counted(study: optuna.Study, trial: optuna.trial.FrozenTrial) -> bool:
        calls[0] += 1
        return prune(study, trial)

    pruner.prune = counted  # type: ignore[method-assign]
    return calls


def _search(pruner: BasePruner, trials: int = 60) -> list[tuple[str, int | None, float | None]]:
    """A seeded search whose curves saturate at a level set by its parameter, with noise,
    a NaN now and then (a diverged trial) and, every fifth trial, the first question asked
    only at epoch 5 (as for a retry that inherited its first reports)."""
    optuna.logging.set_verbosity(optuna.logging.ERROR)
    # the same name: Hyperband puts a trial in a bracket by a hash of the study's name
    study = optuna.create_study(study_name="rungs", direction="maximize", pruner=pruner,
                                sampler=optuna.samplers.TPESampler(seed=0))

    def objective(trial: optuna.Trial) -> float:
        level = trial.suggest_float("level", 0.0, 1.0)
        pace = trial.suggest_float("pace", 1.0, 8.0)
        rng = np.random.default_rng(trial.number)
        value = 0.0
        for epoch in range(1, EPOCHS + 1):
            value = level * (1 - math.exp(-epoch / pace)) + rng.normal(0, 0.02)
            if trial.number % 11 == 7 and epoch == 6:
                value = float("nan")
            trial.report(value, epoch)
            if (trial.number % 5 != 0 or epoch >= 5) and trial.should_prune():
                raise optuna.TrialPruned()
        return value

    study.optimize(objective, n_trials=trials)
    return [(t.state.name, t.last_step, t.value) for t in study.trials]


CASES: dict[str, tuple[Callable[[], BasePruner], Callable[[], BasePruner]]] = {
    "hyperband, min 3": (
        lambda: optuna.pruners.HyperbandPruner(min_resource=3, max_resource=EPOCHS,
                                               reduction_factor=3),
        lambda: GatedHyperband(min_resource=3, max_resource=EPOCHS, reduction_factor=3)),
    "hyperband, min 1": (
        lambda: optuna.pruners.HyperbandPruner(min_resource=1, max_resource=EPOCHS,
                                               reduction_factor=3),
        lambda: GatedHyperband(min_resource=1, max_resource=EPOCHS, reduction_factor=3)),
    "asha": (
        lambda: optuna.pruners.SuccessiveHalvingPruner(min_resource=1, reduction_factor=3),
        lambda: GatedSuccessiveHalving(min_resource=1, reduction_factor=3)),
}


@pytest.mark.parametrize("case", CASES)
def test_the_gated_pruner_prunes_the_same_trials_at_the_same_epochs(case: str) -> None:
    make_plain, make_gated = CASES[case]
    plain = make_plain()
    asked_plain = _count_calls(plain)
    gated = make_gated()
    expected = _search(plain)
    assert _search(gated) == expected
    states = {state for state, _, _ in expected}
    assert {"COMPLETE", "PRUNED"} <= states  # the comparison means something
    assert isinstance(gated, (GatedHyperband, GatedSuccessiveHalving))
    # 20 epochs: asked at the first question and at steps 3 and 9 (min 3), or 1, 3 and 9
    assert gated.asked < asked_plain[0] / 3, (gated.asked, asked_plain[0])


def test_the_study_pruners_are_gated_and_keep_hyperbands_sampling_by_bracket() -> None:
    pruner = make_pruner("hyperband", epochs=EPOCHS)
    # Optuna's samplers see one bracket's trials only when the pruner is a HyperbandPruner.
    assert isinstance(pruner, optuna.pruners.HyperbandPruner)
    assert isinstance(pruner, GatedHyperband)
    assert isinstance(make_pruner("asha", epochs=EPOCHS), GatedSuccessiveHalving)


def test_rungs_need_integer_resources() -> None:
    with pytest.raises(ValueError, match="reduction_factor >= 2"):
        GatedSuccessiveHalving(min_resource=1, reduction_factor=1)


@pytest.mark.parametrize("value", [0.1, float("nan")])
def test_a_pruned_trial_asked_again_gets_the_ungated_answer_again(value: float) -> None:
    optuna.logging.set_verbosity(optuna.logging.ERROR)
    answers = []
    for pruner in (optuna.pruners.SuccessiveHalvingPruner(min_resource=1, reduction_factor=3),
                   GatedSuccessiveHalving(min_resource=1, reduction_factor=3)):
        study = optuna.create_study(direction="maximize", pruner=pruner)
        for kept in (0.9, 0.8):
            trial = study.ask()
            trial.report(kept, 1)
            trial.should_prune()
            study.tell(trial, kept)
        weak = study.ask()
        weak.report(value, 1)
        answers.append([weak.should_prune() for _ in range(3)])
    assert answers[0][0] is True
    assert answers[1] == answers[0]
