"""--balance loss|penalty: every family the same number of trials, pruned within it too."""

from __future__ import annotations

import collections
from pathlib import Path

import optuna
import pytest
from optuna.distributions import CategoricalDistribution, FloatDistribution
from optuna.trial import FrozenTrial, TrialState, create_trial

from search.run import main
from search.study import balance
from tests.search_tests.conftest import load_study
from tests.support import one_error_line

LOSSES = balance.Balance("loss", ("cross_entropy", "focal", "mse"))


def trial(number: int, state: TrialState = TrialState.COMPLETE, loss: str | None = None,
          fixed: str | None = None) -> FrozenTrial:
    made = create_trial(state=state, value=0.5 if state == TrialState.COMPLETE else None,
                        params={"loss": loss} if loss else {},
                        distributions={"loss": CategoricalDistribution(LOSSES.families)}
                        if loss else {},
                        system_attrs={"fixed_params": {"loss": fixed}} if fixed else {})
    made.number = number
    return made


def test_families_are_assigned_round_robin_by_trial_number() -> None:
    trials = [trial(0, loss="cross_entropy"), trial(1, loss="focal")]
    trials.append(trial(2, TrialState.RUNNING))
    assert balance.assign(trials, 2, LOSSES) == "mse"
    # Two workers whose trials were created together, neither family known yet: each works
    # out the other's first, so they take different families.
    trials += [trial(3, TrialState.RUNNING), trial(4, TrialState.RUNNING)]
    assert balance.assign(trials, 3, LOSSES) == "cross_entropy"
    assert balance.assign(trials, 4, LOSSES) == "focal"
    # A failed trial does not count (its retry carries its family), a queued one does.
    trials = [trial(0, TrialState.FAIL, loss="cross_entropy"), trial(1, fixed="focal"),
              trial(2, TrialState.RUNNING)]
    assert balance.assign(trials, 2, LOSSES) == "cross_entropy"
    assert balance.budget(LOSSES, 10) == 12 and balance.budget(LOSSES, 12) == 12


def test_workers_asking_at_once_take_different_families() -> None:
    study = optuna.create_study(direction="maximize",
                                sampler=optuna.samplers.TPESampler(seed=0, multivariate=True))
    balance.round_robin(study, LOSSES)
    # Six trials created before any of them reached the space (six workers asking together),
    # then a queued one, which keeps the family it was queued with.
    asked = [study.ask() for _ in range(6)]
    study.enqueue_trial({"loss": "mse"})
    asked.append(study.ask())
    asked.append(study.ask())
    found = [t.suggest_categorical("loss", LOSSES.families) for t in reversed(asked)][::-1]
    assert found == ["cross_entropy", "focal", "mse"] * 2 + ["mse", "cross_entropy"]
    # The rest of the space is sampled as usual, the family recorded with its full choices.
    assert isinstance(asked[0].suggest_float("lr", 1e-4, 1.0, log=True), float)
    assert study.trials[0].distributions["loss"] == CategoricalDistribution(LOSSES.families)


def _family_study(values: dict[str, list[list[float]]]) -> optuna.Study:
    """Completed trials of each family with the given per-epoch curves."""
    study = optuna.create_study(direction="maximize")
    distributions = {"loss": CategoricalDistribution(LOSSES.families),
                     "lr": FloatDistribution(1e-4, 1.0)}
    for family, curves in values.items():
        for curve in curves:
            study.add_trial(create_trial(
                params={"loss": family, "lr": 0.1}, distributions=distributions,
                value=curve[-1], intermediate_values=dict(enumerate(curve, start=1))))
    return study


def _running(study: optuna.Study, family: str, curve: list[float]) -> FrozenTrial:
    running = study.ask({"loss": CategoricalDistribution(LOSSES.families)})
    running.suggest_categorical("loss", LOSSES.families)  # random: set it as wanted below
    study._storage.set_trial_param(running._trial_id, "loss", LOSSES.families.index(family),
                                   CategoricalDistribution(LOSSES.families))
    for step, value in enumerate(curve, start=1):
        running.report(value, step)
    return study._storage.get_trial(running._trial_id)


def test_a_trial_is_pruned_only_when_weak_across_and_within_its_family() -> None:
    strong, weak = [[0.8, 0.9, 0.95]] * 3, [[0.3, 0.4, 0.5], [0.2, 0.3, 0.4]]
    study = _family_study({"cross_entropy": strong, "mse": weak})
    across = optuna.pruners.MedianPruner(n_startup_trials=1, n_warmup_steps=0)
    pruner = balance.FamilyPruner(across, "loss", startup=2, warmup=0)
    # Weak across all trials but the best of its own family so far: kept.
    assert across.prune(study, _running(study, "mse", [0.35, 0.45]))
    assert not pruner.prune(study, _running(study, "mse", [0.35, 0.45]))
    # Weak across and within its family: pruned.
    assert pruner.prune(study, _running(study, "mse", [0.1, 0.1]))
    # A family with fewer than `startup` completed trials is never judged within itself.
    assert not pruner.prune(study, _running(study, "focal", [0.1, 0.1]))
    # What the study's pruner keeps is kept.
    assert not pruner.prune(study, _running(study, "cross_entropy", [0.85, 0.92]))


def test_the_samplers_of_a_balanced_hyperband_study_still_see_one_bracket() -> None:
    from search.study.rungs import GatedHyperband

    across = GatedHyperband(min_resource=1, max_resource=9, reduction_factor=3)
    pruner = balance.pruner(across, LOSSES, epochs=9)
    assert isinstance(pruner, optuna.pruners.HyperbandPruner)  # as Optuna's samplers check
    study = optuna.create_study(direction="maximize", pruner=pruner,
                                sampler=optuna.samplers.RandomSampler(seed=0))

    def objective(trial: optuna.Trial) -> float:
        trial.suggest_categorical("loss", LOSSES.families)
        x = trial.suggest_float("x", 0, 1)
        for epoch in range(1, 10):
            trial.report(x * epoch, epoch)
            if trial.should_prune():
                raise optuna.TrialPruned()
        return x * 9

    study.optimize(objective, n_trials=24)
    trials = study.get_trials(deepcopy=False)
    brackets = {t.number: across._get_bracket_id(study, t) for t in trials}
    assert len(set(brackets.values())) > 1
    for trial in trials:
        seen = optuna.pruners._filter_study(study, trial).get_trials(deepcopy=False)
        assert {t.number for t in seen} == {
            n for n, b in brackets.items() if b == brackets[trial.number]}
    assert any(t.state == TrialState.PRUNED for t in trials)


@pytest.mark.slow
def test_a_balanced_digits_search_gives_every_family_the_same_trials(
        workdir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from objectives.losses import LOSS_NAMES

    families = len(LOSS_NAMES)  # digits has no teacher: the losses on the labels
    each = -(-12 // families)  # 12 trials asked, rounded up to as many for every family
    assert main(["--study", "digits", "--balance", "loss", "--trials", "12", "--epochs", "2"]) == 0
    out = capsys.readouterr().out
    assert (f"balanced over {families} loss families: {each} trials each "
            f"(budget {each * families})") in out
    study = load_study(workdir)
    assert study.user_attrs["balance"] == "loss" and study.user_attrs["budget"] == each * families
    finished = study.get_trials(states=(TrialState.COMPLETE, TrialState.PRUNED))
    assert len(finished) == each * families
    assert set(collections.Counter(t.params["loss"] for t in finished).values()) == {each}
    # Resumed without --balance, it stays balanced; asked for another balance, it is refused.
    assert main(["--study", "digits", "--epochs", "2"]) == 0
    capsys.readouterr()
    assert main(["--study", "digits", "--epochs", "2", "--balance", "penalty"]) == 2
    line = one_error_line(capsys.readouterr().err)
    assert "was created with --balance loss" in line


@pytest.mark.parametrize(("args", "expected"), [
    (["--balance", "loss", "--fix", "loss=focal"], "--balance loss: loss is held to one family"),
    (["--balance", "loss", "--sampler", "grid", "--grid", "lr=0.01,0.1"],
     "--balance and --sampler grid do not go together"),
])
def test_a_balance_that_cannot_be_is_one_line(workdir: Path, capsys: pytest.CaptureFixture[str],
                                              args: list[str], expected: str) -> None:
    assert main(["--study", "digits", "--epochs", "1", *args]) == 2
    assert expected in one_error_line(capsys.readouterr().err)
    journal = workdir / "mlruns" / "optuna.journal"
    assert not journal.exists() or not optuna.get_all_study_names(
        optuna.storages.JournalStorage(optuna.storages.journal.JournalFileBackend(str(journal))))
    assert not (workdir / "mlruns" / "mlflow.db").exists()
