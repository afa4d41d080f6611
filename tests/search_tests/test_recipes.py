"""Standard recipes: declared by a study, chosen by --recipes, added by --recipe FILE.json,
completed and checked against the space, run as a new study's first trials and marked."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from optuna.trial import TrialState

import spaces
from search.bench.quality import RECIPES as BENCHMARK_RECIPES
from search.core import names
from search.core.errors import UsageError
from search.study import recipes
from search.study.display import leaderboard
from search.study.narrowing import narrow, parameters, pinned_choices
from tests.search_tests.conftest import load_study, runs
from tests.support import one_error_line

DIGITS = spaces.get_study("digits")
SETTINGS = spaces.Settings(epochs=2, seed=0)


def planned(spec: spaces.Study = DIGITS, *, asked: str | None = None,
            own: list[recipes.Recipe] | None = None, fix: list[tuple[str, str]] | None = None,
            choices: list[tuple[str, str]] | None = None, sampler: str = "tpe",
            new: bool = True, budget: int = 40,
            settings: spaces.Settings = SETTINGS) -> recipes.Recipes:
    narrowing = narrow(spec, settings, fix=fix or [], choices=choices or [],
                       pinned=pinned_choices(spec.space, settings))
    return recipes.for_study(spec, settings, narrowing, asked=asked, own=own or [],
                             sampler=sampler, new=new, budget=budget)


def own(params: dict[str, Any], name: str = "mine") -> list[recipes.Recipe]:
    return [recipes.Recipe(name, params, f"{name}.json")]


# -- the shipped recipes -----------------------------------------------------------------------

@pytest.mark.parametrize("name", sorted(spaces.STUDIES))
def test_every_shipped_studys_recipes_are_inside_its_space(name: str) -> None:
    spec = spaces.STUDIES[name]
    settings = spaces.Settings(epochs=2, seed=0, resolution=spec.resolution)
    found = planned(spec, settings=settings)
    assert found.notes == ()
    assert [r.name for r in found.run] == list(spec.recipes) == ["adamw", "sgd"]
    for recipe in found.run:
        declared = spec.recipes[recipe.name]
        assert {k: recipe.params[k] for k in declared} == declared
        # Completed from the study's defaults: its batch size, and nothing drawn but a
        # searched resolution.
        assert recipe.params["batch_size"] == spec.defaults.get(
            "batch_size", declared.get("batch_size"))
        space = parameters(spec.space, settings, fixed=recipe.params)
        assert set(space) - set(recipe.params) <= {"resolution"}


def test_the_image_studies_share_the_quality_benchmarks_two_recipes() -> None:
    for name in ("cifar10", "cifar10-transfer", "cifar100", "mnist", "imagefolder", "curves"):
        assert spaces.STUDIES[name].recipes is spaces.IMAGE_RECIPES
    assert spaces.get_study("cifar10-transfer").defaults["batch_size"] == 64  # the benchmark's
    benchmark = dict(zip(("adamw", "sgd"), BENCHMARK_RECIPES.values(), strict=True))
    for name, params in spaces.IMAGE_RECIPES.items():
        config = benchmark[name]
        assert params == {k: getattr(config, k) for k in params}, name
        assert params["loss"] == "cross_entropy" and params["penalty"] == "none"
        assert params["freeze_depth"] == 0 and params["lr_decay"] == 1.0
    assert spaces.IMAGE_RECIPES["sgd"]["nesterov"] is True


# -- choosing among the study's own -----------------------------------------------------------

def test_recipes_chooses_among_the_studys_own() -> None:
    assert [r.name for r in planned(asked="none").run] == []
    assert [r.name for r in planned(asked="NONE").run] == []
    assert [r.name for r in planned(asked="sgd").run] == ["sgd"]
    assert [r.name for r in planned(asked="sgd,adamw").run] == ["sgd", "adamw"]
    with pytest.raises(UsageError, match="--recipes bogus: study 'digits' has no recipe "
                                         "'bogus'; its recipes: adamw, sgd"):
        planned(asked="bogus")


def test_a_grid_runs_no_recipe_and_says_so_only_when_asked() -> None:
    assert planned(sampler="grid") == recipes.Recipes()
    found = planned(sampler="grid", asked="sgd")
    assert found.run == () and "--sampler grid" in found.notes[0]


def test_a_resumed_study_runs_no_recipe_but_still_checks_them() -> None:
    assert planned(new=False) == recipes.Recipes()
    assert "recipes run only as a new study's first trials" in planned(
        new=False, own=own({"lr": 0.01})).notes[0]
    with pytest.raises(UsageError, match="no recipe 'bogus'"):
        planned(new=False, asked="bogus")


def test_recipes_beyond_the_budget_are_left_out_with_a_note() -> None:
    found = planned(budget=1)
    assert [r.name for r in found.run] == ["adamw"]
    assert found.notes == ("recipe sgd left out: the budget of 1 trial goes to the recipes "
                           "before it",)


# -- the user's own ----------------------------------------------------------------------------

def test_a_recipe_file_names_its_recipe_by_its_stem_or_by_its_keys(tmp_path: Path) -> None:
    one = tmp_path / "fast.json"
    one.write_text(json.dumps({"optimizer": "adam", "lr": 0.003}))
    two = tmp_path / "two.json"
    two.write_text(json.dumps({"a": {"lr": 0.01}, "b": {"loss": "focal", "focal_gamma": 1}}))
    read = recipes.read_files([one, two])
    assert [(r.name, r.params, r.source) for r in read] == [
        ("fast", {"optimizer": "adam", "lr": 0.003}, str(one)),
        ("a", {"lr": 0.01}, str(two)), ("b", {"loss": "focal", "focal_gamma": 1}, str(two))]
    found = planned(asked="none", own=read)
    assert [r.name for r in found.run] == ["fast", "a", "b"]
    # Completed as a grid's point is: TrialConfig's defaults where the file says nothing, each
    # value as its distribution's type.
    assert found.run[0].params == {"loss": "cross_entropy", "penalty": "none",
                                   "optimizer": "adam", "lr": 0.003, "lr_decay": 1.0,
                                   "freeze_depth": 0, "batch_size": 32}
    assert found.run[2].params["focal_gamma"] == 1.0
    assert isinstance(found.run[2].params["focal_gamma"], float)


@pytest.mark.parametrize(("content", "expected"), [
    ("[1, 2]", "holds no recipe: expected a JSON object of parameters"),
    ("{}", "holds no recipe"),
    ('{"a": {"lr": 0.1}, "lr": 0.1}', "mixes parameters and recipes"),
    ('{"a": {}}', "recipe 'a' has no parameter"),
    ('{"lr": [0.1]}', "recipe 'bad', parameter 'lr' is a list, not a number"),
    ("{lr", "is not JSON"),
])
def test_bad_recipe_files_are_one_line(tmp_path: Path, content: str, expected: str) -> None:
    path = tmp_path / "bad.json"
    path.write_text(content)
    with pytest.raises(UsageError, match=expected):
        recipes.read_file(path)
    with pytest.raises(UsageError, match="cannot read recipes from"):
        recipes.read_file(tmp_path / "missing.json")


@pytest.mark.parametrize(("params", "expected"), [
    ({"lossy": "focal"}, "--recipe mine.json: recipe 'mine': study 'digits' has no parameter "
                         "'lossy'; its parameters are loss, "),
    ({"lr": 5}, "--recipe mine.json: recipe 'mine': lr=5 is outside the space: lr is a number "
                "from 0.0001 to 0.3"),
    ({"optimizer": "lion"}, "optimizer=lion is outside the space: optimizer is one of sgd, "),
    ({"nesterov": 1}, "nesterov is never searched with loss=cross_entropy, penalty=none, "
                      "optimizer=adamw"),
    ({"lr": "0.1"}, 'lr="0.1" is outside the space'),
])
def test_a_recipe_outside_the_space_is_bad_input(params: dict[str, Any], expected: str) -> None:
    with pytest.raises(UsageError) as raised:
        planned(own=own(params))
    assert expected in str(raised.value)
    assert "\n" not in str(raised.value)


def test_two_recipes_of_one_name_are_bad_input() -> None:
    with pytest.raises(UsageError, match="recipe 'adamw': study 'digits', recipe 'adamw' has "
                                         "the same name"):
        planned(own=own({"lr": 0.01}, name="adamw"))
    assert [r.name for r in planned(asked="sgd", own=own({"lr": 0.01}, "adamw")).run] == [
        "sgd", "adamw"]


# -- a narrowed space --------------------------------------------------------------------------

def test_a_recipe_outside_a_narrowed_space_is_left_out_with_a_note() -> None:
    found = planned(choices=[("optimizer", "adamw")])
    assert [r.name for r in found.run] == ["adamw"]
    assert found.notes == ("recipe sgd left out: optimizer=momentum is outside --choices "
                           "optimizer=adamw",)
    found = planned(fix=[("lr", "0.01")])
    assert [r.name for r in found.run] == ["sgd"]
    assert found.notes == ("recipe adamw left out: lr=0.001 is outside --fix lr=0.01",)
    # What a recipe leaves out takes --fix's value: it is not left out for it.
    found = planned(fix=[("label_smoothing", "0.2")], own=own({"loss": "label_smoothing"}),
                    asked="none")
    assert found.run[0].params["label_smoothing"] == 0.2
    image = spaces.get_study("curves")
    found = planned(image, fix=[("batch_size", "256")])
    assert [r.params["batch_size"] for r in found.run] == [256, 256] and not found.notes


def test_a_leaderboard_marks_the_recipes_rows() -> None:
    import optuna
    from rich.console import Console

    study = optuna.create_study(direction="maximize")
    study.enqueue_trial({"x": 0.5}, user_attrs={names.RECIPE: "adamw"})
    study.optimize(lambda t: t.suggest_float("x", 0, 1), n_trials=3)
    console = Console(width=200, record=True)
    console.print(leaderboard(study, metric="value"))
    text = console.export_text()
    [header] = [line for line in text.splitlines() if "rank" in line]
    assert "recipe" in header
    [row] = [line for line in text.splitlines() if "adamw" in line]
    assert "0.5000" in row


# -- end to end: search.run on the curves study (simulated, no sleep) --------------------------

FAST = ["--study", "curves", "--epochs", "2", "--time-scale", "0", "--pruner", "none",
        "--race", "none"]


def search(*args: str) -> int:
    from search.run import main

    return main([*FAST, *args])


def test_a_new_study_runs_its_recipes_first_tagged_in_optuna_and_mlflow(
        workdir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert search("--trials", "3") == 0
    out = capsys.readouterr().out
    assert "recipes run first: adamw, sgd" in out
    study = load_study(workdir, "curves")
    trials = sorted(study.trials, key=lambda t: t.number)
    assert [t.user_attrs.get(names.RECIPE) for t in trials] == ["adamw", "sgd", None]
    assert all(t.state == TrialState.COMPLETE for t in trials)
    for trial in trials[:2]:
        declared = spaces.IMAGE_RECIPES[trial.user_attrs[names.RECIPE]]
        assert {k: trial.params[k] for k in declared} == declared
        assert trial.params["batch_size"] == 128
    _, trial_runs = runs(workdir, "curves")
    tags = {int(r.data.tags["optuna.trial_number"]): r.data.tags.get("search.recipe")
            for r in trial_runs}
    assert tags == {0: "adamw", 1: "sgd", 2: None}
    assert "(recipe adamw)" in out  # the trial's line as it finishes
    # A resume queues nothing again: the third trial is the sampler's.
    assert search("--trials", "4") == 0
    study = load_study(workdir, "curves")
    assert [t.user_attrs.get(names.RECIPE) for t in study.trials] == [
        "adamw", "sgd", None, None]
    assert "recipes run first" not in capsys.readouterr().out


@pytest.mark.slow  # two searches; planned() above checks the choice itself
def test_recipes_none_and_recipes_sgd(workdir: Path) -> None:
    assert search("--name", "none", "--trials", "2", "--recipes", "none") == 0
    assert [t.user_attrs.get(names.RECIPE) for t in load_study(workdir, "none").trials] == [
        None, None]
    assert search("--name", "sgd", "--trials", "2", "--recipes", "sgd") == 0
    assert [t.user_attrs.get(names.RECIPE) for t in load_study(workdir, "sgd").trials] == [
        "sgd", None]


def test_a_recipe_outside_choices_is_left_out_with_its_note(
        workdir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = workdir / "mine.json"
    path.write_text(json.dumps({"optimizer": "adam", "lr": 0.003}))
    assert search("--trials", "2", "--choices", "optimizer=adamw,adam", "--recipe",
                  str(path)) == 0
    out = capsys.readouterr().out
    assert "recipe sgd left out: optimizer=momentum is outside --choices " \
           "optimizer=adam,adamw" in out
    study = load_study(workdir, "curves")
    assert [t.user_attrs.get(names.RECIPE) for t in study.trials] == ["adamw", "mine"]
    assert study.trials[1].params["lr"] == 0.003


@pytest.mark.parametrize(("args", "content", "expected"), [
    (["--recipes", "bogus"], None, "study 'curves' has no recipe 'bogus'; its recipes: adamw, "
                                   "sgd"),
    (["--recipe", "mine.json"], {"lossy": "focal"}, "--recipe mine.json: recipe 'mine': study "
                                                    "'curves' has no parameter 'lossy'"),
    (["--recipe", "mine.json"], {"lr": 3.0}, "--recipe mine.json: recipe 'mine': lr=3.0 is "
                                             "outside the space: lr is a number from 1e-05"),
    (["--recipe", "missing.json"], None, "cannot read recipes from missing.json"),
])
def test_bad_recipes_are_one_line_exit_2_and_create_nothing(
        workdir: Path, capsys: pytest.CaptureFixture[str], args: list[str],
        content: dict[str, Any] | None, expected: str) -> None:
    if content is not None:
        (workdir / "mine.json").write_text(json.dumps(content))
    assert search("--trials", "2", *args) == 2
    assert expected in one_error_line(capsys.readouterr().err)
    assert not any(load_study_names(workdir))


def load_study_names(workdir: Path) -> list[str]:
    import optuna

    journal = workdir / "mlruns" / "optuna.journal"
    if not journal.exists():
        return []
    storage = optuna.storages.JournalStorage(
        optuna.storages.journal.JournalFileBackend(str(journal)))
    return optuna.get_all_study_names(storage)


@pytest.mark.slow  # a search; planned() above checks the choice itself
def test_a_grid_runs_no_recipe(workdir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert search("--sampler", "grid", "--grid", "lr=0.001,0.01", "--recipes", "sgd") == 0
    assert "recipes: --sampler grid runs the grid's points only" in capsys.readouterr().out
    study = load_study(workdir, "curves")
    assert [t.user_attrs.get(names.RECIPE) for t in study.trials] == [None, None]
