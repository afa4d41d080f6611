"""The verdict: which loss to use, its margin over cross-entropy, and whether that is noise."""

from __future__ import annotations

import math
import random

import optuna
import pytest
from optuna.distributions import CategoricalDistribution, FloatDistribution
from optuna.trial import TrialState, create_trial

from search.review import verdict

FAMILIES = ("cross_entropy", "focal")


def _study(values: dict[str, list[float]]) -> optuna.Study:
    study = optuna.create_study(study_name="synthetic", direction="maximize")
    distributions = {"loss": CategoricalDistribution(FAMILIES),
                     "penalty": CategoricalDistribution(("none", "l2")),
                     "lr": FloatDistribution(1e-4, 1.0, log=True)}
    for family, found in values.items():
        for i, value in enumerate(found):
            study.add_trial(create_trial(
                params={"loss": family, "penalty": "l2" if i % 2 else "none",
                        "lr": 0.01 * (i + 1)},
                distributions=distributions, value=value))
    study.add_trial(create_trial(params={"loss": "focal", "penalty": "none", "lr": 0.5},
                                 distributions=distributions, state=TrialState.PRUNED))
    return study


def _refits(study: optuna.Study, accuracy: dict[str, list[float]]) -> None:
    """What search.refit --per-family keeps with the study."""
    best = {f: max((t for t in study.trials if t.params.get("loss") == f and t.value),
                   key=lambda t: t.value) for f in accuracy}
    study.set_user_attr(f"{verdict.REFITS}:loss", {
        "by": "loss", "seeds": list(range(len(next(iter(accuracy.values()))))),
        "families": {f: {"trial": best[f].number, "params": best[f].params, "runs": [],
                         **{m: list(v) for m in verdict.METRICS}}
                     for f, v in accuracy.items()}})


def _say(study: optuna.Study) -> str:
    return verdict.verdict(study, by="loss", value=lambda t: float(t.value),
                           metric="val_accuracy", maximize=True)


def test_the_interval_is_students_t_over_the_seeds() -> None:
    found = verdict.interval([0.90, 0.92, 0.94])
    assert found.mean == pytest.approx(0.92)
    assert found.high - found.mean == pytest.approx(4.302653 * 0.02 / math.sqrt(3), rel=1e-5)
    assert math.isnan(verdict.interval([0.9]).low)
    gap = verdict.paired([0.95, 0.96, 0.97], [0.90, 0.91, 0.93])
    assert gap.excludes_zero and gap.mean == pytest.approx(0.0467, abs=1e-4)
    assert "+4.7 [" in gap.points()


def test_two_families_equal_by_construction_are_within_noise() -> None:
    rng = random.Random(0)
    seeds = [rng.gauss(0.9, 0.01) for _ in range(3)]
    study = _study({"cross_entropy": [0.8, 0.85], "focal": [0.84, 0.86]})
    # The same accuracy per seed plus noise of the same size: nothing to tell them apart.
    _refits(study, {"cross_entropy": [s + rng.gauss(0, 0.01) for s in seeds],
                    "focal": [s + rng.gauss(0, 0.01) for s in seeds]})
    said = _say(study)
    assert "from refits of each family's best trial with 3 seeds" in said
    assert "within noise" in said and "larger than the seed noise" not in said
    assert "cross_entropy 2 (2 completed, 0 pruned)" in said
    assert "focal 3 (2 completed, 1 pruned)" in said


def test_a_family_better_by_more_than_the_noise_is_named_with_its_margin() -> None:
    study = _study({"cross_entropy": [0.8, 0.85], "focal": [0.84, 0.86]})
    _refits(study, {"cross_entropy": [0.90, 0.91, 0.92], "focal": [0.93, 0.945, 0.95]})
    said = _say(study)
    assert "use focal, as in trial 3 [loss=focal penalty=l2" in said  # its parameters too
    assert "+3.2 [" in said and "larger than the seed noise" in said


def test_one_seed_gives_no_interval_and_says_so() -> None:
    study = _study({"cross_entropy": [0.8, 0.85], "focal": [0.84, 0.86]})
    _refits(study, {"cross_entropy": [0.90], "focal": [0.95]})
    said = _say(study)
    assert "highest test accuracy: focal" in said and "+5.0 points" in said
    assert "one seed gives no interval" in said and "as good as far as" not in said


def test_on_validation_alone_the_verdict_says_its_noise_is_unknown() -> None:
    study = _study({"cross_entropy": [0.8, 0.85, 0.83], "focal": [0.84, 0.88]})
    said = _say(study)
    assert said.startswith("Verdict (loss, on validation only): focal looks best")
    assert "cross_entropy's best reached 0.8500 (+3.0 points)" in said
    assert "noise is unknown" in said and "--per-family loss --seeds 3" in said
    # Unequal budgets (3 trials against 3 with one pruned is equal; make it unequal).
    study.add_trial(create_trial(params={"loss": "cross_entropy", "penalty": "none", "lr": 0.1},
                                 distributions=study.trials[0].distributions, value=0.5))
    assert "not searched on equal budgets" in _say(study)
    study.set_user_attr("balance", "loss")
    assert "not searched on equal budgets" not in _say(study)
    assert _say(optuna.create_study()) == ""
