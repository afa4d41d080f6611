"""Narrowing a study's space from the command line (--fix, --choices), and a study's categorical
choices pinned at its creation so that an upgrade that adds a loss does not break it."""

from __future__ import annotations

from pathlib import Path

import optuna
import pytest
from optuna.distributions import CategoricalDistribution, FloatDistribution
from optuna.storages import JournalStorage
from optuna.storages.journal import JournalFileBackend
from optuna.trial import TrialState

import spaces
from search.core.errors import UsageError
from search.run import main
from search.study import narrowing
from tests.search_tests.conftest import load_study, runs
from tests.support import one_error_line

DIGITS = spaces.get_study("digits")
SETTINGS = spaces.Settings(epochs=2, seed=0)
TINY = ["--study", "digits", "--epochs", "2", "--pruner", "none"]


def test_the_probe_finds_every_parameter_with_its_distribution() -> None:
    found = narrowing.parameters(DIGITS.space, SETTINGS)
    # The conditional ones too, each under the choice that enables it.
    assert {"loss", "huber_delta", "focal_gamma", "penalty_lambda", "momentum", "nesterov",
            "lr", "freeze_depth", "batch_size"} <= set(found)
    assert isinstance(found["lr"], FloatDistribution) and found["lr"].log
    assert found["batch_size"] == CategoricalDistribution((16, 32, 64))
    held = narrowing.parameters(DIGITS.space, SETTINGS, fixed={"loss": "focal"})
    assert "focal_gamma" in held and "huber_delta" not in held


def test_a_narrowed_space_suggests_the_fixed_value_and_the_chosen_choices() -> None:
    narrowed = narrowing.narrow(DIGITS, SETTINGS, fix=[("loss", "huber"), ("lr", "0.01")],
                                choices=[("optimizer", "sgd,adamw")])
    assert narrowed.fixed == {"loss": "huber", "lr": 0.01}
    assert narrowed.choices == {"optimizer": ("sgd", "adamw")}  # in the space's order
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    space = narrowed.apply(DIGITS.space)
    for _ in range(12):
        trial = study.ask()
        config = space(trial, SETTINGS)
        assert config.loss == "huber" and config.lr == 0.01
        assert config.optimizer in ("sgd", "adamw")
        assert trial.params["loss"] == "huber"  # recorded as a parameter like any other
        assert "huber_delta" in trial.params
        study.tell(trial, 0.5)


@pytest.mark.parametrize(("fix", "choices", "expected"), [
    ([("lossy", "1")], [], "has no parameter 'lossy'; its parameters are loss,"),
    ([("lr", "5")], [], "--fix lr=5: lr is a number from 0.0001 to 0.3"),
    ([("lr", "fast")], [], "--fix lr=fast: lr is a number"),
    ([("freeze_depth", "1.5")], [], "freeze_depth is an integer from 0 to 3"),
    ([("loss", "hinge")], [], "loss is one of bce, cross_entropy,"),
    ([], [("lr", "0.1,0.2")], "--choices narrows a categorical parameter"),
    ([], [("optimizer", "sgd,foo")], "--choices optimizer=foo: optimizer is one of"),
    ([("loss", "focal"), ("huber_delta", "1.0")], [],
     "huber_delta is never searched with --fix loss=focal"),
    ([("loss", "focal")], [("loss", "focal,huber")], "loss is already given by --fix"),
])
def test_bad_narrowing_is_one_line(fix: list, choices: list, expected: str) -> None:
    with pytest.raises(UsageError) as caught:
        narrowing.narrow(DIGITS, SETTINGS, fix=fix, choices=choices)
    message = str(caught.value)
    assert expected in message and "\n" not in message


@pytest.mark.slow
def test_a_narrowed_search_end_to_end_and_its_resume(
        workdir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    narrow = ["--fix", "loss=focal", "--fix", "batch_size=32",
              "--choices", "optimizer=adamw,sgd"]
    assert main([*TINY, "--trials", "3", *narrow]) == 0
    study = load_study(workdir)
    assert len(study.trials) == 3
    for trial in study.trials:
        assert trial.state == TrialState.COMPLETE
        assert trial.params["loss"] == "focal" and trial.params["batch_size"] == 32
        assert trial.params["optimizer"] in ("adamw", "sgd")
    parents, trial_runs = runs(workdir)
    assert parents[0].data.tags["search.narrowing"] == (
        "loss=focal; batch_size=32; optimizer in sgd,adamw")
    for run in trial_runs:
        assert run.data.params["loss"] == "focal"  # logged like any other parameter
        assert run.data.tags["search.fixed"] == "loss,batch_size"  # and marked fixed

    # A resume keeps the narrowing, given again or left out; another one is refused.
    assert main([*TINY, "--trials", "4"]) == 0
    assert main([*TINY, "--trials", "5", *narrow]) == 0
    study = load_study(workdir)
    assert len(study.trials) == 5
    assert all(t.params["loss"] == "focal" for t in study.trials)
    capsys.readouterr()
    assert main([*TINY, "--trials", "6", "--fix", "loss=huber"]) == 2
    line = one_error_line(capsys.readouterr().err)
    assert "was created with loss=focal; batch_size=32; optimizer in sgd,adamw" in line
    assert "--name NEW" in line
    assert len(load_study(workdir).trials) == 5


@pytest.mark.slow
def test_bad_narrowing_exits_2_with_nothing_created(
        workdir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main([*TINY, "--fix", "loss=focal", "--fix", "huber_delta=1"]) == 2
    line = one_error_line(capsys.readouterr().err)
    assert "huber_delta is never searched with --fix loss=focal" in line
    journal = workdir / "mlruns" / "optuna.journal"
    assert not journal.exists() or not optuna.get_all_study_names(
        JournalStorage(JournalFileBackend(str(journal))))
    assert not (workdir / "mlruns" / "mlflow.db").exists()
    assert main([*TINY, "--fix", "loss"]) == 2
    assert "must be NAME=VALUE" in one_error_line(capsys.readouterr().err)


@pytest.mark.slow
def test_a_study_keeps_its_choices_when_a_new_version_adds_a_loss(
        workdir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import objectives.config
    import objectives.losses
    import spaces.common

    assert main([*TINY, "--trials", "2"]) == 0
    before = tuple(load_study(workdir).user_attrs["choices"]["loss"])
    assert before == objectives.losses.LOSS_NAMES

    # The next version registers one more loss (here: cross-entropy under a new name).
    names = tuple(sorted((*objectives.losses.LOSS_NAMES, "new_loss")))
    monkeypatch.setitem(objectives.losses.ALL_LOSSES, "new_loss",
                        objectives.losses.CrossEntropyLoss)
    monkeypatch.setitem(objectives.losses.LOSS_PARAMS, "new_loss", ())
    for module in (objectives.losses, objectives.config, spaces.common):
        monkeypatch.setattr(module, "LOSS_NAMES", names)

    assert main([*TINY, "--trials", "4"]) == 0  # the old study resumes over its old choices
    study = load_study(workdir)
    assert [t.state for t in study.trials] == [TrialState.COMPLETE] * 4
    assert all(t.distributions["loss"] == CategoricalDistribution(before)
               for t in study.trials)

    assert main([*TINY, "--trials", "1", "--name", "fresh"]) == 0  # a new one gets the new loss
    fresh = load_study(workdir, "fresh")
    assert tuple(fresh.user_attrs["choices"]["loss"]) == names
    assert fresh.trials[0].distributions["loss"] == CategoricalDistribution(names)
