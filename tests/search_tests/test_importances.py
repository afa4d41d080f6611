"""search.review.importances on hand-made conditional studies: global ranking, scopes, notes."""

from __future__ import annotations

import math
import random
import warnings
from typing import Any

import optuna
import pytest
from optuna.distributions import (
    BaseDistribution,
    CategoricalDistribution,
    FloatDistribution,
)
from optuna.trial import TrialState, create_trial

from search.review import importances
from search.review.importances import ALL, Importance, condition, global_params, param_importances

LOSSES = ("cross_entropy", "focal", "huber", "distill", "mse")  # 6 of each in 30 trials
PENALTIES = ("none", "l1", "l2", "l2_sp")
OPTIMIZERS = ("adam", "sgd", "momentum", "rmsprop")


def config(i: int, rng: random.Random) -> tuple[dict[str, Any], dict[str, BaseDistribution]]:
    """Trial i of a conditional space like spaces/: what it sets and their distributions."""
    params: dict[str, Any] = {"lr": 10 ** rng.uniform(-5, -1), "loss": LOSSES[i % 5],
                              "penalty": PENALTIES[i % 4], "optimizer": OPTIMIZERS[(i // 5) % 4],
                              "seed_noise": rng.uniform(0, 1)}
    dists: dict[str, BaseDistribution] = {
        "lr": FloatDistribution(1e-5, 1e-1, log=True), "loss": CategoricalDistribution(LOSSES),
        "penalty": CategoricalDistribution(PENALTIES),
        "optimizer": CategoricalDistribution(OPTIMIZERS), "seed_noise": FloatDistribution(0, 1)}
    conditional = {"focal": {"focal_gamma": FloatDistribution(0, 5)},
                   "huber": {"huber_delta": FloatDistribution(0.1, 2)},
                   "distill": {"distill_alpha": FloatDistribution(0, 1),
                               "distill_temperature": FloatDistribution(1, 8)}}
    extra: dict[str, BaseDistribution] = dict(conditional.get(params["loss"], {}))
    if params["penalty"] != "none":
        extra["penalty_lambda"] = FloatDistribution(1e-6, 1e-2, log=True)
    if params["optimizer"] in ("momentum", "rmsprop"):
        extra["momentum"] = FloatDistribution(0.5, 0.99)
    if i == 7:
        extra["nesterov_only_once"] = CategoricalDistribution((False, True))
    for name, dist in extra.items():
        params[name] = (rng.choice(dist.choices) if isinstance(dist, CategoricalDistribution)
                        else rng.uniform(dist.low, dist.high))  # type: ignore[attr-defined]
        dists[name] = dist
    return params, dists


def error(params: dict[str, Any]) -> float:
    """Driven by lr overall; among focal trials by focal_gamma."""
    return (math.log10(params["lr"]) + 3) ** 2 + 0.01 * params["seed_noise"] \
        + 0.5 * params.get("focal_gamma", 0.0)


def conditional_study(n: int = 30, multi: bool = False) -> optuna.Study:
    rng = random.Random(0)
    study = optuna.create_study(directions=["minimize", "maximize"] if multi else ["minimize"])
    for i in range(n):
        params, dists = config(i, rng)
        values = [error(params), 1 - error(params) / 20] if multi else [error(params)]
        study.add_trial(create_trial(params=params, distributions=dists, values=values))
    return study


def rows_by_name(rows: list[Importance]) -> dict[str, Importance]:
    return {r.parameter: r for r in rows}


@pytest.fixture(scope="module")
def found() -> tuple[list[Importance], list[str]]:
    study = conditional_study()
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # none escapes
        return param_importances(study)


def test_global_ranking_covers_only_what_every_trial_has(found: tuple) -> None:
    rows, _ = found
    ranked = [r for r in rows if r.scope == ALL]
    assert [r.parameter for r in ranked][0] == "lr"
    assert {r.parameter for r in ranked} == {"lr", "loss", "penalty", "optimizer", "seed_noise"}
    assert sum(r.importance for r in ranked) == pytest.approx(1.0)
    assert all(r.trials == 30 for r in ranked)
    assert [r.importance for r in ranked] == sorted((r.importance for r in ranked), reverse=True)


def test_a_conditional_parameter_is_ranked_within_its_scope(found: tuple) -> None:
    rows, _ = found
    by_name = rows_by_name(rows)
    gamma = by_name["focal_gamma"]
    assert (gamma.scope, gamma.trials) == ("loss=focal", 6)
    assert 0 < gamma.importance <= 1
    assert (by_name["huber_delta"].scope, by_name["huber_delta"].trials) == ("loss=huber", 6)
    assert by_name["penalty_lambda"].scope == "penalty!=none"
    assert by_name["penalty_lambda"].trials == sum(p != "none" for p in
                                                   (PENALTIES[i % 4] for i in range(30)))
    assert by_name["momentum"].scope == "where set"  # optimizer in (momentum, rmsprop)
    # Set in the same trials, evaluated together: shares of the same whole.
    alpha, temperature = by_name["distill_alpha"], by_name["distill_temperature"]
    assert alpha.scope == temperature.scope == "loss=distill"
    assert alpha.importance + temperature.importance <= 1 + 1e-9
    assert rows.index(gamma) > max(rows.index(r) for r in rows if r.scope == ALL)


def test_a_parameter_too_few_trials_have_is_a_note_not_a_row(found: tuple) -> None:
    rows, notes = found
    assert "nesterov_only_once" not in rows_by_name(rows)
    assert "nesterov_only_once: only 1 completed trial has it (needs 2): not ranked" in notes
    assert len(notes) == len(set(notes))
    assert not any("low `target`" in note for note in notes)


def test_global_params_are_those_of_every_completed_trial() -> None:
    study = conditional_study(10)
    study.add_trial(create_trial(state=TrialState.FAIL))
    assert global_params(study) == ["loss", "lr", "optimizer", "penalty", "seed_noise"]
    assert global_params(optuna.create_study()) == []


def test_fewer_than_two_completed_trials_give_nothing() -> None:
    study = conditional_study(1)
    study.add_trial(create_trial(state=TrialState.FAIL))
    assert param_importances(study) == ([], [])
    assert param_importances(optuna.create_study()) == ([], [])


def test_a_multi_objective_study_with_a_callable_target() -> None:
    study = conditional_study(multi=True)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        rows, _ = param_importances(study, target=lambda t: -t.values[1])
    by_name = rows_by_name(rows)
    assert [r for r in rows if r.scope == ALL][0].parameter == "lr"
    assert (by_name["focal_gamma"].scope, by_name["focal_gamma"].trials) == ("loss=focal", 6)


def test_no_log_line_for_the_in_memory_studies(found: tuple,
                                               capfd: pytest.CaptureFixture[str]) -> None:
    study = conditional_study(12)
    capfd.readouterr()
    param_importances(study)
    assert "A new study created" not in capfd.readouterr().err


def test_an_optuna_error_becomes_a_note(monkeypatch: pytest.MonkeyPatch) -> None:
    def fail(*args: Any, **kwargs: Any) -> dict[str, float]:
        raise ValueError("cannot assess\nsecond line")

    monkeypatch.setattr(importances.optuna.importance, "get_param_importances", fail)
    rows, notes = param_importances(conditional_study(12))
    assert rows == []
    [note] = [n for n in notes if "cannot assess" in n]  # once, with where it came from
    assert note.startswith("cannot assess (in: all trials, ") and "loss=focal" in note


def test_an_optuna_warning_is_one_note_naming_its_scopes() -> None:
    study = conditional_study()
    trial = study.trials[3]  # run again after lr's range was widened: a regime of 1 trial
    study.add_trial(create_trial(params=trial.params, value=3.0, distributions={
        **trial.distributions, "lr": FloatDistribution(1e-6, 1.0, log=True)}))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        _, notes = param_importances(study)
    [note] = [n for n in notes if "Some regimes for parameter `lr`" in n]
    assert note.endswith("(in: all trials, penalty!=none, loss=distill)")  # trial 3's scopes


@pytest.mark.parametrize(("name", "expected"), [
    ("focal_gamma", "optimizer=momentum"), ("extra", "penalty!=none"), ("other", "where set")])
def test_condition_names(name: str, expected: str) -> None:
    def trial(**params: Any) -> optuna.trial.FrozenTrial:
        dists: dict[str, BaseDistribution] = {
            k: CategoricalDistribution(PENALTIES + OPTIMIZERS) if isinstance(v, str)
            else FloatDistribution(0, 1) for k, v in params.items()}
        return create_trial(params=params, distributions=dists, value=0.0)

    trials = [trial(optimizer="momentum", penalty="l1", focal_gamma=0.5, extra=0.1),
              trial(optimizer="momentum", penalty="l2", focal_gamma=0.1, extra=0.3),
              trial(optimizer="adam", penalty="l2", extra=0.2, other=0.2),
              trial(optimizer="sgd", penalty="none", other=0.1),
              trial(optimizer="adam", penalty="none")]
    assert condition(name, trials) == expected
