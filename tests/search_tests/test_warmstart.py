"""Warm starts: a study's best configurations, exported, read back, fitted to a space, enqueued."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import optuna
import pytest
from optuna.distributions import (
    BaseDistribution,
    CategoricalDistribution,
    FloatDistribution,
    IntDistribution,
)
from optuna.trial import TrialState, create_trial

from search import report
from search import run as search_run
from search.core.errors import UsageError
from search.study import warmstart
from tests.search_tests.conftest import load_study
from tests.support import one_error_line

SPACE: dict[str, BaseDistribution] = {
    "loss": CategoricalDistribution(["cross_entropy", "focal", "mse"]),
    "lr": FloatDistribution(1e-4, 1.0, log=True),
    "batch_size": IntDistribution(16, 128, step=16),
}


def study_with(rows: list[tuple[dict[str, Any], Any]], **create: Any) -> optuna.Study:
    """An in-memory study with one trial per (params, values or a state) row."""
    study = optuna.create_study(**create)
    for params, outcome in rows:
        distributions = {name: SPACE[name] for name in params}
        if isinstance(outcome, TrialState):
            study.add_trial(create_trial(params=params, distributions=distributions,
                                         state=outcome))
        else:
            study.add_trial(create_trial(params=params, distributions=distributions,
                                         values=outcome if isinstance(outcome, list)
                                         else [outcome]))
    return study


A = {"loss": "focal", "lr": 0.01, "batch_size": 32}
B = {"loss": "mse", "lr": 0.1, "batch_size": 64}
C = {"loss": "cross_entropy", "lr": 0.003, "batch_size": 16}
D = {"loss": "focal", "lr": 0.5, "batch_size": 128}


# -- best_configurations ---------------------------------------------------------------------

def test_best_first_in_the_studys_direction_without_repeats() -> None:
    rows = [(A, 0.7), (B, 0.9), (A, 0.95), (C, 0.8), (D, TrialState.FAIL),
            (D, TrialState.PRUNED), (C, 0.6)]
    assert warmstart.best_configurations(study_with(rows, direction="maximize"), 3) == [A, B, C]
    assert warmstart.best_configurations(study_with(rows, direction="maximize"), 10) == [A, B, C]
    assert warmstart.best_configurations(study_with(rows, direction="minimize"), 2) == [C, A]
    assert warmstart.best_configurations(study_with(rows, direction="minimize"), 1) == [C]
    assert warmstart.best_configurations(study_with([(A, TrialState.FAIL)]), 3) == []
    with pytest.raises(ValueError, match="positive"):
        warmstart.best_configurations(study_with(rows), 0)


def test_multi_objective_takes_the_pareto_front_by_its_first_objective() -> None:
    # (accuracy up, ece down): A, B and C are the front, D is dominated by B; A comes twice.
    rows = [(A, [0.90, 0.02]), (B, [0.95, 0.08]), (C, [0.70, 0.01]), (D, [0.85, 0.10]),
            (A, [0.90, 0.02])]
    study = study_with(rows, directions=["maximize", "minimize"])
    assert warmstart.best_configurations(study, 5) == [B, A, C]
    assert warmstart.best_configurations(study, 2) == [B, A]


# -- read_configurations ---------------------------------------------------------------------

def test_read_configurations_round_trips_what_export_writes(tmp_path: Path) -> None:
    study = study_with([(A, 0.7), (B, 0.9)], direction="maximize")
    path = tmp_path / "deep" / "best.json"
    assert warmstart.export_best(study, 5, path) == [B, A]
    assert warmstart.read_configurations(path) == [B, A]
    assert path.read_text().startswith("[\n  {\n")  # pretty: one entry per configuration


@pytest.mark.parametrize(("content", "problem"), [
    (None, "cannot read configurations from {path} (No such file or directory)"),
    ("[{\"lr\": 0.1},", "{path} is not JSON (Expecting value: line 1 column 14 (char 13))"),
    ("{\"lr\": 0.1}", "{path} holds no configuration: expected a JSON list of parameter "
                      "objects, as search.report --export-best writes"),
    ("[]", "{path} holds no configuration"),
    ("[{\"lr\": 0.1}, [1, 2]]", "{path}: entry 1 is a list, not a parameter object"),
    ("[{\"lr\": {\"low\": 0.1}}]", "{path}: entry 0, parameter 'lr' is a dict, not a number, "
                                  "string, boolean or null"),
    ("[{\"lr\": [0.1]}]", "{path}: entry 0, parameter 'lr' is a list"),
])
def test_read_configurations_errors_are_one_line(tmp_path: Path, content: str | None,
                                                 problem: str) -> None:
    path = tmp_path / "configs.json"
    if content is not None:
        path.write_text(content)
    with pytest.raises(UsageError) as caught:
        warmstart.read_configurations(path)
    message = str(caught.value)
    assert "\n" not in message
    assert message.startswith(problem.format(path=path)), message


def test_read_configurations_of_a_folder_or_binary_is_one_line(tmp_path: Path) -> None:
    (tmp_path / "binary.json").write_bytes(b"\xff\xfe\x00")
    for path in (tmp_path, tmp_path / "binary.json"):
        with pytest.raises(UsageError) as caught:
            warmstart.read_configurations(path)
        assert str(path) in str(caught.value) and "\n" not in str(caught.value)


# -- applicable --------------------------------------------------------------------------------

def test_applicable_keeps_the_spaces_parameters_inside_it() -> None:
    configs = [
        {**A, "penalty": "l2"},  # a parameter this space lacks
        {"loss": "huber", "lr": 2.0, "batch_size": 40, "penalty": "l1"},  # nothing fits
        {"loss": "mse", "lr": 1, "batch_size": 64.0},  # JSON numbers: typed as the space's
        {"loss": "focal", "lr": "0.1", "batch_size": True},  # wrong types
        {"loss": "mse", "batch_size": 20},  # 20 is off the step
    ]
    result = warmstart.applicable(configs, SPACE, source="best.json")
    assert result.configs == [A, {"loss": "mse", "lr": 1.0, "batch_size": 64},
                              {"loss": "focal"}, {"loss": "mse"}]
    assert isinstance(result.configs[1]["batch_size"], int)
    assert isinstance(result.configs[1]["lr"], float)
    assert result.dropped == {"penalty": 2, "loss": 1, "lr": 2, "batch_size": 3}
    assert result.note == (
        "warm start: 4 of 5 configurations from best.json apply; left out: batch_size (3x, "
        "outside it), loss (1x, outside it), lr (2x, outside it), penalty (2x, not in this "
        "space)")


def test_applicable_takes_a_categorical_value_only_among_its_choices() -> None:
    space: dict[str, BaseDistribution] = {
        "flag": CategoricalDistribution([True, False]),
        "depth": CategoricalDistribution([1, 2, None]),
    }
    configs = [{"flag": 1, "depth": True}, {"flag": False, "depth": None}, {"depth": 2.0}]
    result = warmstart.applicable(configs, space, source="x.json")
    assert result.configs == [{"flag": False, "depth": None}, {"depth": 2}]
    assert result.dropped == {"flag": 1, "depth": 1}


def test_applicable_says_nothing_when_all_applies() -> None:
    result = warmstart.applicable([A, B], SPACE, source="best.json")
    assert result.configs == [A, B] and result.dropped == {} and result.note is None


def test_applicable_refuses_when_none_applies() -> None:
    with pytest.raises(UsageError) as caught:
        warmstart.applicable([{"momentum": 0.9}, {"penalty": "l2", "momentum": 0.5}], SPACE,
                             source="other.json")
    assert str(caught.value) == (
        "none of the 2 configurations from other.json has a parameter of this study's space; "
        "its parameters are batch_size, loss, lr")
    with pytest.raises(UsageError) as caught:
        warmstart.applicable([{"lr": 5.0, "momentum": 0.9}], SPACE, source="other.json")
    assert str(caught.value) == (
        "none of the 1 configurations from other.json has a value inside this study's space "
        "(outside it: lr); its parameters are batch_size, loss, lr")


# -- enqueue -----------------------------------------------------------------------------------

def test_enqueued_configurations_come_first_and_only_once() -> None:
    study = optuna.create_study(direction="maximize")
    configs = [A, {"loss": "mse"}]  # a partial one: the sampler draws the rest
    assert warmstart.enqueue(study, configs) == 2
    for expected in configs:
        trial = study.ask()
        drawn = {name: trial._suggest(name, SPACE[name]) for name in SPACE}
        assert drawn.items() >= expected.items()
        study.tell(trial, 0.5)
    assert warmstart.enqueue(study, configs) == 0  # a resume: tried already
    assert warmstart.enqueue(study, [B]) == 1
    assert warmstart.enqueue(study, [B]) == 0  # waiting already
    assert len(study.trials) == 3


# -- search.report --export-best -----------------------------------------------------------

@pytest.mark.slow  # a real search
def test_report_exports_the_best_configurations(workdir: Path,
                                                capsys: pytest.CaptureFixture[str]) -> None:
    # Sampled configurations only: a recipe's would be queued again by the warm start, and
    # skipped as one the study has (the recipes of a new study come first).
    assert search_run.main(["--study", "digits", "--epochs", "1", "--trials", "3",
                            "--pruner", "none", "--recipes", "none"]) == 0
    capsys.readouterr()
    out = workdir / "warm" / "best.json"
    assert report.main(["--study", "digits", "--export-best", "2", str(out)]) == 0
    captured = capsys.readouterr()
    assert "Traceback" not in captured.out + captured.err
    assert f"wrote the 2 best configurations of study 'digits' to {out}" in captured.out

    study = load_study(workdir)
    completed = sorted(study.get_trials(states=(TrialState.COMPLETE,)),
                       key=lambda t: -t.values[0])
    assert len(completed) == 3
    configs = warmstart.read_configurations(out)
    assert configs == [t.params for t in completed[:2]]
    assert json.loads(out.read_text()) == configs
    # What it exported fits the same study's space as it is.
    space = {name: d for t in study.trials for name, d in t.distributions.items()}
    assert warmstart.applicable(configs, space, source=str(out)).note is None


    # search.run tries them first in another study, from the file or from the study itself,
    # right after the study's two standard recipes.
    fast = ["--study", "digits", "--epochs", "1", "--pruner", "none"]
    assert search_run.main([*fast, "--name", "warm", "--trials", "4", "--enqueue", str(out)]) == 0
    warm = load_study(workdir, "warm").trials
    assert [t.user_attrs.get("recipe") for t in warm] == ["adamw", "sgd", None, None]
    assert [t.params for t in warm[2:]] == configs
    assert search_run.main([*fast, "--name", "warm2", "--trials", "3",
                            "--enqueue-from", "digits:1"]) == 0
    assert load_study(workdir, "warm2").trials[2].params == configs[0]
    assert "warm start: 1 configuration queued to run first" in capsys.readouterr().out


@pytest.mark.parametrize(("argv", "expected"), [
    (["--enqueue", "missing.json"], "cannot read configurations from missing.json"),
    (["--enqueue-from", "nope"], "no study 'nope'"),
    (["--enqueue-storage", "x.journal"], "--enqueue-storage goes with --enqueue-from STUDY"),
    (["--enqueue", "missing.json", "--sampler", "grid", "--grid", "lr=0.1"],
     "do not apply to --sampler grid"),
])
def test_bad_warm_starts_are_one_line(argv: list[str], expected: str, workdir: Path,
                                      capsys: pytest.CaptureFixture[str]) -> None:
    assert search_run.main(["--study", "digits", *argv]) == 2
    assert expected in one_error_line(capsys.readouterr().err)


def journal_study(workdir: Path, rows: list[tuple[dict[str, Any], Any]]) -> None:
    storage = optuna.storages.JournalStorage(optuna.storages.journal.JournalFileBackend(
        str(workdir / "mlruns" / "optuna.journal")))
    study = optuna.create_study(study_name="digits", storage=storage, direction="maximize")
    for params, value in rows:
        study.add_trial(create_trial(params=params, value=value,
                                     distributions={n: SPACE[n] for n in params}))


def test_report_exports_a_hand_made_study(workdir: Path,
                                          capsys: pytest.CaptureFixture[str]) -> None:
    journal_study(workdir, [(A, 0.7), (B, 0.9), (C, 0.8)])
    assert report.main(["--study", "digits", "--export-best", "1", "one.json"]) == 0
    assert "wrote the 1 best configuration of study 'digits' to one.json" in \
        capsys.readouterr().out
    assert warmstart.read_configurations(workdir / "one.json") == [B]


@pytest.mark.parametrize(("argv", "expected"), [
    (["--export-best", "0", "x.json"],
     "search.report: error: argument --export-best: must be a positive integer, got 0"),
    (["--export-best", "two", "x.json"],
     "search.report: error: argument --export-best: must be a positive integer, got 'two'"),
    (["--export-best", "3"], "search.report: error: argument --export-best: expected 2 "
                             "arguments"),
    (["--export-best", "3", "mlruns"], "search.report: error: cannot write mlruns (Is a "
                                       "directory)"),
    (["--export-best", "3", "mlruns/optuna.journal/x.json"],
     "search.report: error: cannot write mlruns/optuna.journal/x.json"),
])
def test_bad_export_is_one_line_and_exit_2(argv: list[str], expected: str, workdir: Path,
                                           capsys: pytest.CaptureFixture[str]) -> None:
    journal_study(workdir, [(A, 0.7)])
    assert report.main(["--study", "digits", *argv]) == 2
    captured = capsys.readouterr()
    assert one_error_line(captured.err, "search.report").startswith(expected), captured.err
    assert captured.out == ""  # refused before the report
    assert not (workdir / "mlruns" / "reports").exists()


def test_a_study_with_no_completed_trial_has_nothing_to_export(
        workdir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    journal_study(workdir, [])
    assert report.main(["--study", "digits", "--export-best", "3", "x.json"]) == 2
    assert one_error_line(capsys.readouterr().err, "search.report") == (
        "search.report: error: study 'digits' has no completed trial: no configuration to "
        "write to x.json")
    assert not (workdir / "x.json").exists()
