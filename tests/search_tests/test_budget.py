"""The study's budget holds when workers race for its last trials."""

from __future__ import annotations

import optuna
from optuna.trial import TrialState

from search.study.optuna_study import over_budget


def test_of_trials_started_at_once_for_the_last_place_only_the_first_keeps_it() -> None:
    optuna.logging.set_verbosity(optuna.logging.ERROR)
    study = optuna.create_study()
    for value in (0.1, 0.2):
        study.tell(study.ask(), value)
    failed = study.ask()
    study.tell(failed, state=TrialState.FAIL)  # a failed trial gives its place back
    pruned = study.ask()
    study.tell(pruned, state=TrialState.PRUNED)
    # Budget 4: three places taken (two complete, one pruned). Two workers both saw 3 < 4 and
    # each started a trial: numbers 4 and 5.
    first, second = study.ask(), study.ask()
    assert not over_budget(study, first.number, 4)
    assert over_budget(study, second.number, 4)
    # Had the first one failed before the second looked, the second would keep the place.
    study.tell(first, state=TrialState.FAIL)
    assert not over_budget(study, second.number, 4)


def test_a_trial_numbered_below_the_budget_is_within_it_without_reading_the_study() -> None:
    # Fewer than `budget` trials were created before it, whatever their states: on a database
    # the look at every trial (a query per trial started) is saved.
    class Unread:
        def get_trials(self, **_: object) -> list[object]:
            raise AssertionError("the study was read")

    assert not over_budget(Unread(), 3, 4)  # type: ignore[arg-type]
    study = optuna.create_study()
    for _ in range(4):
        study.tell(study.ask(), 0.5)
    assert over_budget(study, study.ask().number, 4)
