"""The race of the finalists (search.study.race, search.execution.race): its bookkeeping.

Resamplings never touch test and keep the pool; runs are paired by round; a clearly worse
finalist is dropped but the recipe never is; the decision goes both ways (a configuration that
truly beats the recipe replaces it, noise does not); an interrupted race resumes; the race runs
on the workers; its runs are tracked, nested under the study's run.
"""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
import optuna
import pytest
import torch
from optuna.distributions import CategoricalDistribution, FloatDistribution
from optuna.trial import TrialState, create_trial

from objectives.data import ImageData, Split
from search.core import names
from search.execution import race as racing
from search.execution import session
from search.run import main
from search.study import race
from tests.search_tests.conftest import client, load_study
from tests.support import Untouchable, one_error_line, with_test

CURVES = ["--study", "curves", "--time-scale", "0"]


# --- what a resampling is ---------------------------------------------------------------------

def _data(test: Any = None) -> ImageData:
    labels = torch.arange(60) % 3
    images = torch.arange(60, dtype=torch.uint8).view(60, 1, 1, 1).expand(60, 1, 2, 2)
    train, val = Split(images[:40].clone(), labels[:40]), Split(images[40:].clone(), labels[40:])
    return ImageData(train, val, test if test is not None else Split(images[:3], labels[:3]),
                     ("a", "b", "c"), (0.5,), (0.25,))


def _ids(split: Split) -> set[int]:
    return set(split.x[:, 0, 0, 0].tolist())


def test_a_resampling_splits_the_same_pool_again_and_never_reads_test() -> None:
    data = _data(test=Untouchable())  # any use of the test split fails
    again = data.resampled(7)
    assert isinstance(again.test, Untouchable)
    assert (len(again.train), len(again.val)) == (40, 20)
    assert _ids(again.train) | _ids(again.val) == set(range(60))  # the same pool, disjoint
    assert not _ids(again.train) & _ids(again.val)
    shares = Counter(again.val.y.tolist()).values()
    assert len(shares) == 3 and all(abs(n - 20 / 3) < 1 for n in shares)  # stratified
    assert _ids(again.val) != _ids(data.val)  # a new split ...
    assert _ids(data.resampled(7).val) == _ids(again.val)  # ... fixed by its seed
    assert _ids(data.resampled(8).val) != _ids(again.val)
    images = again.train.x[:, 0, 0, 0].long()
    assert torch.equal(again.train.y, images % 3)  # labels travel with their images


def test_round_seeds_are_fixed_by_the_study_seed_and_differ_by_round() -> None:
    seeds = [race.resampling_seed(0, r) for r in (1, 2, 3)]
    assert len(set(seeds)) == 3 and 0 not in seeds
    assert seeds == [race.resampling_seed(0, r) for r in (1, 2, 3)]
    assert race.resampling_seed(1, 1) != seeds[0]


# --- --race -----------------------------------------------------------------------------------

def test_race_sizes() -> None:
    assert race.parse_race("none") is None
    assert race.parse_race("2,4") == race.RaceSize(2, 4)
    for bad in ("0,3", "x", "3,1", "3", "3,3,3", "-1,3"):
        with pytest.raises(ValueError, match="--race takes K,R"):
            race.parse_race(bad)


def test_a_default_race_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(race.RACE_ENV, raising=False)
    assert race.parse_race(None) == race.RaceSize(*race.DEFAULT)
    monkeypatch.setenv(race.RACE_ENV, "4,2")
    assert race.parse_race(None) == race.RaceSize(4, 2)
    assert race.parse_race("1,3") == race.RaceSize(1, 3)  # the flag wins
    monkeypatch.setenv(race.RACE_ENV, "none")
    assert race.parse_race(None) is None
    monkeypatch.setenv(race.RACE_ENV, "lots")
    with pytest.raises(ValueError, match=r"got 'lots' \(from \$FINETUNE_SEARCH_RACE\)"):
        race.parse_race(None)


@pytest.mark.parametrize("text", ["0,3", "x", "4,1"])
def test_a_bad_race_is_one_line_and_exit_2(text: str, capsys: pytest.CaptureFixture[str],
                                           tmp_path: Path, monkeypatch: pytest.MonkeyPatch
                                           ) -> None:
    monkeypatch.chdir(tmp_path)
    assert main([*CURVES, "--race", text]) == 2
    assert "--race takes K,R" in one_error_line(capsys.readouterr().err)


# --- finalists, pairing, elimination, the decision --------------------------------------------

LR = FloatDistribution(1e-5, 1.0, log=True)
OPT = CategoricalDistribution(("adamw", "sgd"))


def _trial(number: int, value: float | None, lr: float, *, recipe: str | None = None,
           state: TrialState = TrialState.COMPLETE, reports: dict[int, float] | None = None
           ) -> optuna.trial.FrozenTrial:
    trial = create_trial(params={"lr": lr, "optimizer": "adamw"},
                         distributions={"lr": LR, "optimizer": OPT},
                         value=value, state=state, intermediate_values=reports or {},
                         user_attrs={names.RECIPE: recipe} if recipe else {})
    trial.number = number
    return trial


def test_finalists_are_the_best_distinct_searched_configurations_and_the_best_recipe() -> None:
    trials = [_trial(0, 0.80, 1e-3, recipe="adamw"),
              _trial(1, None, 1e-2, recipe="sgd", state=TrialState.PRUNED, reports={3: 0.84}),
              _trial(2, 0.90, 0.1), _trial(3, 0.90, 0.1),  # the same configuration twice
              _trial(4, 0.85, 0.2), _trial(5, 0.70, 0.3), _trial(6, 0.99, 0.4, recipe="")]
    chosen = race.finalists(trials, 2, maximize=True)
    assert [f.label for f in chosen] == ["trial 6", "trial 2", "recipe sgd"]
    assert chosen[-1].recipe == "sgd" and chosen[-1].value == 0.84  # pruned: its last report
    assert [f.label for f in race.finalists(trials, 1, maximize=False)][:1] == ["trial 5"]


def test_differences_are_paired_by_round() -> None:
    a, b = {1: 0.9, 2: 0.8, 3: 0.7}, {2: 0.75, 3: 0.75, 4: 0.1}
    assert race.differences(a, b, maximize=True) == pytest.approx([0.05, -0.05])
    assert race.differences(a, b, maximize=False) == pytest.approx([-0.05, 0.05])


def test_a_clearly_worse_finalist_is_dropped_and_the_recipe_never_is() -> None:
    scores = {"trial 1": {1: 0.90, 2: 0.91}, "trial 2": {1: 0.80, 2: 0.805},
              "trial 3": {1: 0.93, 2: 0.86}, "recipe adamw": {1: 0.70, 2: 0.71}}
    dropped = race.to_drop(scores, out=set(), incumbent="recipe adamw", maximize=True)
    assert dropped == {"trial 2"}  # trial 3 is as good within its noise; the recipe stays
    assert race.to_drop(scores, out={"trial 1"}, incumbent="recipe adamw", maximize=True) \
        == set()  # with the leader out, trial 3 leads, and beats no one beyond its noise
    assert race.to_drop({"a": {1: 0.9}, "b": {1: 0.1}}, out=set(), incumbent=None,
                        maximize=True) == set()  # one round says nothing about the noise


def _decide(scores: dict[str, dict[int, float]], **kw: Any) -> race.Result:
    chosen = [race.Finalist(label, i, {"lr": 0.1 * (i + 1)}, 0.9,
                            label.split()[1] if label.startswith("recipe") else None)
              for i, label in enumerate(scores)]
    return race.decide(chosen, scores, dropped=kw.get("dropped", {}),
                       resamplings=3, maximize=True, metric="val_accuracy", study="s.race@9")


def test_a_configuration_that_truly_beats_the_recipe_replaces_it() -> None:
    result = _decide({"trial 4": {1: 0.85, 2: 0.86, 3: 0.87},
                      "recipe sgd": {1: 0.80, 2: 0.815, 3: 0.82}})
    assert (result.pick, result.decision) == ("trial 4", race.SEARCHED)
    assert "beats the recipe sgd beyond the noise" in result.statement
    assert result.difference is not None and result.difference["low"] > 0
    pick = result.entry("trial 4")
    assert pick is not None and pick.mean == pytest.approx(0.86)
    assert pick.low is not None and pick.high is not None and pick.low < 0.86 < pick.high


def test_noise_does_not_replace_the_recipe() -> None:
    result = _decide({"trial 4": {1: 0.87, 2: 0.83, 3: 0.86},  # ahead on the mean by 1 point
                      "recipe adamw": {1: 0.84, 2: 0.85, 3: 0.84}})
    assert (result.pick, result.decision) == ("recipe adamw", race.RECIPE)
    assert result.statement.startswith("the recipe adamw is as good as anything found, "
                                       "within noise (the leader, trial 4: +1.00 points")


def test_a_dropped_finalist_cannot_lead_and_without_recipes_the_leader_is_the_pick() -> None:
    result = _decide({"trial 1": {1: 0.95, 2: 0.95}, "trial 2": {1: 0.90, 2: 0.91, 3: 0.92}},
                     dropped={"trial 1": 3})
    assert (result.pick, result.decision) == ("trial 2", race.LEADER)
    assert race.rows(result)[0][-1] == "dropped before round 3"
    again = race.Result.from_json(json.loads(json.dumps(result.to_json())))
    assert again == result  # stored with the study as JSON, read back the same


# --- the race, run ----------------------------------------------------------------------------

def _race_runs(workdir: Path, name: str) -> list[optuna.trial.FrozenTrial]:
    study = load_study(workdir, name)
    return load_study(workdir, study.user_attrs[names.RACE_STUDY]).trials


@pytest.mark.slow
@pytest.mark.race
def test_a_search_ends_with_a_tracked_paired_race(workdir: Path,
                                                  capsys: pytest.CaptureFixture[str]) -> None:
    assert main([*CURVES, "--trials", "8", "--epochs", "4", "--pruner", "none"]) == 0
    out = capsys.readouterr().out
    study = load_study(workdir, "curves")
    searched = [t for t in study.trials
                if t.state == TrialState.COMPLETE and not t.user_attrs.get(names.RECIPE)]
    result = race.Result.from_json(study.user_attrs[names.RACE])
    assert "race: " in out and f"answer: {result.statement}" in out
    assert "the race" in out and "epochs" in out  # its cost beside the search's
    labels = [e.label for e in result.finalists]
    assert len(labels) == min(2, len(searched)) + 1  # the 2 best searched + the best recipe
    assert labels[-1].startswith("recipe ") and len(searched) >= 2
    runs = _race_runs(workdir, "curves")
    seeds: dict[int, set[int]] = {}
    for run in runs:
        seeds.setdefault(run.user_attrs[names.RACE_ROUND], set()).add(
            run.user_attrs[names.RACE_RESAMPLING])
    assert sorted(seeds) == [1, 2, 3] and all(len(s) == 1 for s in seeds.values())  # paired
    assert len({next(iter(s)) for s in seeds.values()}) == 3
    # The race never fed the search: the study holds only its own trials.
    assert not any(names.RACE_FINALIST in t.user_attrs for t in study.trials)
    # Tracked: every run that trained has its MLflow run under the race's run, which is
    # nested under the study's run; the decision is on both.
    mlflow = client(workdir)
    experiment = mlflow.get_experiment_by_name("curves")
    assert experiment is not None
    every = mlflow.search_runs([experiment.experiment_id], max_results=1000)
    parent = study.user_attrs[names.MLFLOW_PARENT_RUN_ID]
    race_run = next(r for r in every if r.data.tags.get("search.role") == "race")
    assert race_run.data.tags["mlflow.parentRunId"] == parent
    assert race_run.data.tags["search.race.pick"] == result.pick
    tracked = [r for r in every
               if r.data.tags.get("mlflow.parentRunId") == race_run.info.run_id]
    trained = [t for t in runs if t.state == TrialState.COMPLETE]
    assert len(tracked) == len(trained)
    assert {(r.data.tags["search.race"], r.data.tags["search.race.round"]) for r in tracked} \
        == {(t.user_attrs[names.RACE_FINALIST], str(t.user_attrs[names.RACE_ROUND]))
            for t in trained}
    study_run = mlflow.get_run(parent)
    assert study_run.data.tags["search.race.decision"] == result.decision
    # The report shows the race and leads its verdict with the answer.
    from search.report import main as report

    assert report(["--study", "curves"]) == 0
    shown = capsys.readouterr().out
    assert f"The answer (a race of {len(labels)} finalists" in shown and "round 3" in shown


@pytest.mark.slow
def test_race_none_and_multi_objective_studies_have_no_race(
        workdir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main([*CURVES, "--trials", "4", "--epochs", "2", "--race", "none"]) == 0
    assert "no race (--race none)" in capsys.readouterr().out
    assert names.RACE not in load_study(workdir, "curves").user_attrs
    assert main([*CURVES, "--trials", "4", "--epochs", "2", "--name", "multi",
                 "--objectives", "accuracy,ece", "--race", "2,2"]) == 0
    assert "no race: a multi-objective study" in capsys.readouterr().out


@pytest.mark.slow
def test_the_race_trains_on_resamplings_and_the_refit_takes_its_pick(
        workdir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """On digits: every task the search and its race train on has an untouchable test split;
    the race's runs train on their round's resampling; search.refit refits the pick."""
    real_load = session.load_task
    trained_on: list[int] = []

    def load_guarded(*args: Any) -> Any:
        return with_test(real_load(*args), Untouchable())

    real_vary = racing.Rounds.vary

    def vary(self: racing.Rounds, trial: Any, task: Any, settings: Any) -> Any:
        varied, varied_settings, tags = real_vary(self, trial, task, settings)
        assert isinstance(varied.data.test, Untouchable)
        assert varied_settings.seed == trial.user_attrs[names.RACE_RESAMPLING]
        pool = np.sort(np.concatenate([task.data.train.y.numpy(), task.data.val.y.numpy()]))
        assert np.array_equal(pool, np.sort(np.concatenate(
            [varied.data.train.y.numpy(), varied.data.val.y.numpy()])))
        trained_on.append(varied_settings.seed)
        return varied, varied_settings, tags

    monkeypatch.setattr(session, "load_task", load_guarded)
    monkeypatch.setattr(racing.Rounds, "vary", vary)
    assert main(["--study", "digits", "--trials", "4", "--epochs", "2", "--race", "1,2",
                 "--pruner", "none"]) == 0
    study = load_study(workdir)
    result = race.Result.from_json(study.user_attrs[names.RACE])
    assert len(set(trained_on)) == 2 and len(trained_on) == 2 * len(result.finalists)
    from search.refit import main as refit

    assert refit(["--study", "digits", "--device", "cpu"]) == 0
    pick = result.entry(result.pick)
    assert pick is not None
    mlflow = client(workdir)
    experiment = mlflow.get_experiment_by_name("digits")
    assert experiment is not None
    refits = mlflow.search_runs([experiment.experiment_id],
                                filter_string="tags.`search.role` = 'refit'")
    assert refits[0].data.tags["search.refit_of_trial"] == str(pick.trial)


@pytest.mark.slow
def test_an_interrupted_race_resumes_where_it_stopped(
        workdir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    real_vary = racing.Rounds.vary
    calls = []

    def interrupted_at_the_third(self: racing.Rounds, *args: Any) -> Any:
        calls.append(1)
        if len(calls) == 3:
            raise KeyboardInterrupt
        return real_vary(self, *args)

    monkeypatch.setattr(racing.Rounds, "vary", interrupted_at_the_third)
    argv = [*CURVES, "--trials", "6", "--epochs", "3", "--race", "2,2", "--pruner", "none"]
    assert main(argv) == 130
    study = load_study(workdir, "curves")
    assert names.RACE not in study.user_attrs  # nothing decided yet
    monkeypatch.setattr(racing.Rounds, "vary", real_vary)
    assert main(argv) == 0
    runs = _race_runs(workdir, "curves")
    done = Counter((t.user_attrs[names.RACE_FINALIST], t.user_attrs[names.RACE_ROUND])
                   for t in runs if t.state == TrialState.COMPLETE)
    result = race.Result.from_json(load_study(workdir, "curves").user_attrs[names.RACE])
    assert set(done.values()) == {1}  # no run trained twice
    assert len(done) == 2 * len(result.finalists)  # and none left out
    assert any(t.user_attrs.get(names.FAIL_REASON) == names.INTERRUPTED for t in runs)
    assert result.pick is not None


@pytest.mark.slow
def test_the_workers_run_the_race(workdir: Path) -> None:
    assert main([*CURVES, "--trials", "6", "--epochs", "3", "--race", "2,2",
                 "--workers", "2", "--pruner", "none"]) == 0
    runs = _race_runs(workdir, "curves")
    workers = {t.user_attrs[names.WORKER] for t in runs if t.state == TrialState.COMPLETE}
    assert len(workers) == 2  # both workers took runs (neither is the launcher)
    assert not any(w.endswith(f":{__import__('os').getpid()}") for w in workers)
    assert names.RACE in load_study(workdir, "curves").user_attrs


def test_timeout_is_one_deadline_for_the_search_and_its_race() -> None:
    from search.execution.driver import time_left

    now = __import__("time").monotonic()
    assert time_left(None, now - 100) is None  # no --timeout: no deadline
    assert time_left(10, now - 4) == pytest.approx(6, abs=0.5)  # the race gets what is left
    assert time_left(3, now - 4) == 0.0  # the search used it all


@pytest.mark.slow
@pytest.mark.race
def test_a_race_cut_short_by_the_timeout_exits_1_and_the_same_command_finishes_it(
        workdir: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    from search.execution import driver

    real = driver.time_left
    monkeypatch.setattr(driver, "time_left",  # the search spent the whole --timeout
                        lambda timeout, started: None if timeout is None else 0.0)
    argv = [*CURVES, "--trials", "6", "--epochs", "3", "--race", "2,2", "--pruner", "none"]
    assert main([*argv, "--timeout", "600"]) == 1
    out = capsys.readouterr().out
    assert "the race stopped short (--timeout): run the same command again" in out
    assert "answer:" not in out
    study = load_study(workdir, "curves")
    assert len([t for t in study.trials if t.state == TrialState.COMPLETE]) == 6
    assert names.RACE not in study.user_attrs  # nothing decided
    runs = _race_runs(workdir, "curves")
    assert runs and all(t.state == TrialState.WAITING for t in runs)  # queued, none trained
    monkeypatch.setattr(driver, "time_left", real)
    assert main(argv) == 0
    assert "answer:" in capsys.readouterr().out
    assert names.RACE in load_study(workdir, "curves").user_attrs


@pytest.mark.slow
@pytest.mark.race
def test_search_sync_rebuilds_the_races_runs(workdir: Path,
                                              capsys: pytest.CaptureFixture[str]) -> None:
    from search.sync import main as sync

    assert main([*CURVES, "--trials", "6", "--epochs", "3", "--race", "2,2",
                 "--pruner", "none"]) == 0
    study = load_study(workdir, "curves")
    race_study = load_study(workdir, study.user_attrs[names.RACE_STUDY])
    mlflow = client(workdir)
    experiment = mlflow.get_experiment_by_name("curves")
    assert experiment is not None
    every = mlflow.search_runs([experiment.experiment_id], max_results=1000)
    old = next(r for r in every if r.data.tags.get("search.role") == "race")
    for run in every:  # the race's run and its runs, gone from MLflow
        if run.info.run_id == old.info.run_id or \
                run.data.tags.get("mlflow.parentRunId") == old.info.run_id:
            mlflow.delete_run(run.info.run_id)
    capsys.readouterr()

    assert sync(["--study", "curves", "--settle", "0"]) == 0
    out = capsys.readouterr().out.splitlines()
    trained = [t for t in race_study.trials if t.state == TrialState.COMPLETE]
    assert out[-1] == (f"study {race_study.study_name!r}: {len(race_study.trials)} finished "
                       f"trials; {len(trained)} runs rebuilt, parent run rebuilt")
    every = mlflow.search_runs([experiment.experiment_id], max_results=1000)
    rebuilt = next(r for r in every if r.data.tags.get("search.role") == "race")
    assert rebuilt.info.run_id != old.info.run_id
    assert rebuilt.data.tags["mlflow.parentRunId"] == study.user_attrs[names.MLFLOW_PARENT_RUN_ID]
    tracked = {(r.data.tags["search.race"], r.data.tags["search.race.round"],
                r.data.tags["search.race.resampling"]) for r in every
               if r.data.tags.get("mlflow.parentRunId") == rebuilt.info.run_id}
    assert tracked == {(t.user_attrs[names.RACE_FINALIST], str(t.user_attrs[names.RACE_ROUND]),
                        str(t.user_attrs[names.RACE_RESAMPLING])) for t in trained}
    assert sync(["--study", "curves", "--settle", "0"]) == 0  # a second sync changes nothing
    assert capsys.readouterr().out.splitlines()[-1].endswith("finished trials; nothing to do")
