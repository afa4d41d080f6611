"""Grid search: every point of --grid runs exactly once, with one worker or several."""

from __future__ import annotations

import collections
from pathlib import Path

import optuna
import pytest
from optuna.trial import TrialState

import spaces
from search.core.errors import UsageError
from search.execution.session import SearchOptions, open_search
from search.run import main
from search.study import grid
from search.study.narrowing import Narrowing, narrow
from tests.search_tests.conftest import load_study, ran
from tests.support import one_error_line

DIGITS = spaces.get_study("digits")
SETTINGS = spaces.Settings(epochs=2, seed=0)


def test_points_are_complete_configurations_each_once() -> None:
    found = grid.points(DIGITS, SETTINGS, Narrowing(),
                        [("loss", "cross_entropy,focal"), ("lr", "0.01,0.1")])
    assert [(p["loss"], p["lr"]) for p in found] == [
        ("cross_entropy", 0.01), ("cross_entropy", 0.1), ("focal", 0.01), ("focal", 0.1)]
    # The rest from TrialConfig's defaults, conditional ones where they apply.
    assert found[0] == {"loss": "cross_entropy", "penalty": "none", "optimizer": "adamw",
                        "lr": 0.01, "lr_decay": 1.0, "freeze_depth": 0, "batch_size": 32}
    assert found[2]["focal_gamma"] == 2.0
    # A value that only matters under one choice makes no copies of the others.
    found = grid.points(DIGITS, SETTINGS, Narrowing(),
                        [("loss", "cross_entropy,focal"), ("focal_gamma", "1,3")])
    assert [(p["loss"], p.get("focal_gamma")) for p in found] == [
        ("cross_entropy", None), ("focal", 1.0), ("focal", 3.0)]
    fixed = narrow(DIGITS, SETTINGS, fix=[("optimizer", "sgd")])
    found = grid.points(DIGITS, SETTINGS, fixed, [("batch_size", "16,64")])
    assert [(p["optimizer"], p["batch_size"]) for p in found] == [("sgd", 16), ("sgd", 64)]


def test_the_image_study_defaults_fill_what_trialconfig_cannot() -> None:
    cifar = spaces.get_study("cifar10")
    found = grid.points(cifar, spaces.Settings(epochs=2, seed=0, resolution=32), Narrowing(),
                        [("lr", "0.001")])
    assert found[0]["weight_decay"] == 0.05 and found[0]["batch_size"] == 128


@pytest.mark.parametrize(("fix", "axes", "expected"), [
    ([], [("lossy", "a")], "--grid lossy: study 'digits' has no parameter 'lossy'"),
    ([], [("lr", "0.01,5")], "--grid lr=5: lr is a number from 0.0001 to 0.3"),
    ([("lr", "0.01")], [("lr", "0.1")], "--grid lr: lr is already given"),
    ([("loss", "focal")], [("huber_delta", "0.5,1")],
     "huber_delta is never searched with --fix loss=focal"),
    ([], [("loss", "focal"), ("huber_delta", "0.5,1")],
     "huber_delta is never searched on this grid"),
    ([], [], "--sampler grid needs the grid"),
])
def test_bad_grids_are_one_line(fix: list, axes: list, expected: str) -> None:
    narrowing = narrow(DIGITS, SETTINGS, fix=fix)
    with pytest.raises(UsageError) as caught:
        grid.points(DIGITS, SETTINGS, narrowing, axes)
    assert expected in str(caught.value) and "\n" not in str(caught.value)


def test_a_parameter_without_a_default_needs_a_value() -> None:
    cifar = spaces.get_study("cifar10")  # its resolution is searched: no default
    with pytest.raises(UsageError, match="resolution .* has no default in this study's space; "
                                         "give it with --fix resolution=VALUE"):
        grid.points(cifar, spaces.Settings(epochs=2, seed=0, resolution=None), Narrowing(),
                    [("lr", "0.01")])


def test_a_worker_that_finds_the_queue_empty_starts_nothing() -> None:
    storage = optuna.storages.InMemoryStorage()
    mine = optuna.create_study(study_name="g", storage=storage)
    other = optuna.load_study(study_name="g", storage=storage)  # another worker
    mine.enqueue_trial({"x": 1.0})
    raw_ask = mine.ask

    def raced(fixed_distributions: object = None) -> optuna.Trial:
        other.ask()  # takes the last point between our look at the queue and our ask
        return raw_ask()

    mine.ask = raced  # type: ignore[method-assign]
    grid.only_queued(mine)
    with pytest.raises(grid.GridDone):
        mine.ask()
    taken, extra = mine.trials
    assert taken.state == TrialState.RUNNING and taken.params == {} and \
        taken.system_attrs["fixed_params"] == {"x": 1.0}
    assert extra.state == TrialState.FAIL and extra.user_attrs["fail_reason"] == grid.EXHAUSTED
    with pytest.raises(grid.GridDone):  # the queue is empty: nothing is created at all
        mine.ask()
    assert len(mine.trials) == 2


def test_grid_options_that_contradict_are_one_line(workdir: Path) -> None:
    for options, expected in [
        (SearchOptions(study="digits", grid=[("lr", "0.1")]), "--grid goes with --sampler grid"),
        (SearchOptions(study="digits", sampler="grid", grid=[("lr", "0.1")], trials=3),
         "--trials does not apply to --sampler grid"),
    ]:
        with pytest.raises(UsageError, match=expected):
            open_search(options)


@pytest.mark.slow
def test_two_workers_run_every_point_exactly_once(
        workdir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    argv = ["--study", "digits", "--epochs", "1", "--pruner", "none", "--sampler", "grid",
            "--grid", "loss=cross_entropy,focal,huber", "--grid", "lr=0.01,0.1",
            "--grid", "batch_size=16,32"]
    assert main([*argv, "--workers", "2"]) == 0
    study = load_study(workdir)
    counts = collections.Counter((t.params["loss"], t.params["lr"], t.params["batch_size"])
                                 for t in ran(study))
    assert len(counts) == 12 and set(counts.values()) == {1}  # every point, each once
    assert all(t.state == TrialState.COMPLETE for t in ran(study))
    assert study.user_attrs["budget"] == 12
    # Run again: every point has run, nothing more does; another grid is refused.
    before = len(study.trials)
    assert main(argv[:8]) == 0
    assert len(load_study(workdir).trials) == before
    capsys.readouterr()
    assert main([*argv[:8], "--grid", "lr=0.2"]) == 2
    assert "was created with another grid" in one_error_line(capsys.readouterr().err)
