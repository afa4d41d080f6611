"""The loss part of every study's space, pinned: a study started before a change must resume
after it, so each loss's parameter names, distributions and the order of the suggestions stay."""

from __future__ import annotations

from typing import Any, cast

import optuna
import pytest
from optuna.distributions import BaseDistribution, CategoricalDistribution, FloatDistribution

from objectives.losses import DISTILL, LOSS_NAMES, LOSS_PARAMS, LOSSES
from spaces.common import suggest_loss

# The shipped losses' own parameters as the space suggests them, in order, and a value inside
# each; a loss not pinned here is expected to suggest what it declares (_own).
OWN: dict[str, list[tuple[str, BaseDistribution, float]]] = {
    "label_smoothing": [("label_smoothing", FloatDistribution(0.01, 0.3), 0.2)],
    "focal": [("focal_gamma", FloatDistribution(0.5, 5.0), 3.5)],
    "huber": [("huber_delta", FloatDistribution(0.01, 1.0, log=True), 0.05)],
    "kl": [("kl_smoothing", FloatDistribution(0.01, 0.3), 0.15)],
}
DISTILL_OWN: list[tuple[str, BaseDistribution, float]] = [
    ("distill_temperature", FloatDistribution(1.0, 10.0, log=True), 3.0),
    ("distill_alpha", FloatDistribution(0.1, 1.0), 0.4),
]


def _own(loss: str) -> list[tuple[str, BaseDistribution, float]]:
    """The pinned parameters of `loss`, or those it declares, each with its range's middle."""
    if loss in OWN:
        return OWN[loss]
    return [(p.field, FloatDistribution(p.low, p.high, log=p.log), (p.low + p.high) / 2)
            for p in LOSS_PARAMS[loss]]


def _suggested(values: dict[str, Any], *, distill: bool) -> tuple[
    list[tuple[str, BaseDistribution]], dict[str, Any]
]:
    trial = optuna.trial.FixedTrial(values)
    params = suggest_loss(cast(optuna.Trial, trial), distill=distill)  # FixedTrial duck-types it
    return list(trial.distributions.items()), params  # in the order they were suggested


def test_the_loss_names_are_the_registered_losses() -> None:
    assert LOSS_NAMES == tuple(sorted(LOSSES)) and DISTILL not in LOSS_NAMES
    assert set(OWN) <= set(LOSS_NAMES)  # every pinned loss is still offered


@pytest.mark.parametrize("distill", [False, True])
@pytest.mark.parametrize("loss", LOSS_NAMES)
def test_each_loss_suggests_its_own_parameters(loss: str, distill: bool) -> None:
    own = _own(loss)
    choices = (*LOSS_NAMES, "distill") if distill else LOSS_NAMES
    suggested, params = _suggested({"loss": loss, **{n: v for n, _, v in own}}, distill=distill)
    assert suggested == [("loss", CategoricalDistribution(choices)),
                         *((n, d) for n, d, _ in own)]
    assert params == {"loss": loss, **{n: v for n, _, v in own}}


@pytest.mark.parametrize("base", LOSS_NAMES)
def test_distill_suggests_its_own_then_its_bases_parameters(base: str) -> None:
    own = _own(base)
    values = {"loss": "distill", **{n: v for n, _, v in DISTILL_OWN}, "distill_base": base,
              **{n: v for n, _, v in own}}
    suggested, params = _suggested(values, distill=True)
    assert suggested == [("loss", CategoricalDistribution((*LOSS_NAMES, "distill"))),
                         *((n, d) for n, d, _ in DISTILL_OWN),
                         ("distill_base", CategoricalDistribution(LOSS_NAMES)),
                         *((n, d) for n, d, _ in own)]
    assert list(params) == list(values) and params == values


def test_a_real_study_records_the_same_distributions() -> None:
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    study.enqueue_trial({"loss": "distill", "distill_base": "huber"})
    study.optimize(lambda t: len(suggest_loss(t, distill=True)), n_trials=1)
    assert study.trials[0].distributions == {
        "loss": CategoricalDistribution((*LOSS_NAMES, "distill")),
        **{n: d for n, d, _ in DISTILL_OWN},
        "distill_base": CategoricalDistribution(LOSS_NAMES),
        **{n: d for n, d, _ in OWN["huber"]},
    }
