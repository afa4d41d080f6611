from __future__ import annotations

import math
from typing import Any

import optuna
import pytest
import torch

from objectives.config import TrialConfig
from objectives.losses import LOSS_NAMES, LOSS_PARAMS, build_loss
from objectives.optim import OPTIMIZERS, build_optimizer
from objectives.penalties import PENALTIES, build_penalty
from spaces.base import Settings
from spaces.digits import STUDY, space

DEFAULTS = TrialConfig()
# The parameters each loss that has some adds (from its declaration): the TrialConfig fields.
LOSS_PARAM = {loss: tuple(p.field for p in LOSS_PARAMS[loss])
              for loss in LOSS_NAMES if LOSS_PARAMS[loss]}
# A value of its own for each of them, inside its range and not its default.
_DECLARED = [p for loss in LOSS_PARAM for p in LOSS_PARAMS[loss]]
CONDITIONAL_LOSS_VALUES = {p.field: p.low + (p.high - p.low) * (i + 1) / (len(_DECLARED) + 1)
                           for i, p in enumerate(_DECLARED)}


def test_the_loss_parameter_values_are_distinct_and_not_defaults() -> None:
    assert LOSS_PARAM  # the losses with a parameter, which the tests below go over
    assert len(set(CONDITIONAL_LOSS_VALUES.values())) == len(CONDITIONAL_LOSS_VALUES)
    assert all(v != getattr(DEFAULTS, f) for f, v in CONDITIONAL_LOSS_VALUES.items())


def _params(**changes: Any) -> dict[str, Any]:
    params: dict[str, Any] = {
        "loss": "cross_entropy",
        "penalty": "none",
        "optimizer": "adam",
        "lr": 0.003,
        "lr_decay": 0.8,
        "freeze_depth": 1,
        "batch_size": 32,
    }
    params.update(changes)
    return params


def _suggest(params: dict[str, Any], *, epochs: int = 7, seed: int = 11) -> tuple[
    TrialConfig, optuna.trial.FixedTrial
]:
    trial = optuna.trial.FixedTrial(params)
    return space(trial, Settings(epochs=epochs, seed=seed)), trial


def test_study_uses_this_space() -> None:
    assert STUDY.name == "digits"
    assert STUDY.space is space
    assert STUDY.direction == "maximize" and STUDY.metric == "val_accuracy"


def test_plain_trial() -> None:
    config, trial = _suggest(_params())
    assert isinstance(config, TrialConfig)
    assert config.loss == "cross_entropy" and config.penalty == "none"
    assert config.optimizer == "adam" and config.lr == 0.003
    assert config.freeze_depth == 1 and config.batch_size == 32
    assert config.epochs == 7 and config.seed == 11
    assert set(trial.params) == {"loss", "penalty", "optimizer", "lr", "lr_decay",
                                 "freeze_depth", "batch_size"}
    assert config.loss_params() == {}


@pytest.mark.parametrize("epochs,seed", [(1, 0), (20, 3), (150, 12345)])
def test_epochs_and_seed_pass_through(epochs: int, seed: int) -> None:
    config, trial = _suggest(_params(), epochs=epochs, seed=seed)
    assert config.epochs == epochs and config.seed == seed
    assert "epochs" not in trial.params and "seed" not in trial.params


@pytest.mark.parametrize("loss", LOSS_NAMES)
def test_every_loss_and_only_its_parameter(loss: str) -> None:
    # Offer every conditional value: only the one that belongs to `loss` may be used.
    config, trial = _suggest(_params(loss=loss, **CONDITIONAL_LOSS_VALUES))
    assert config.loss == loss
    own = LOSS_PARAM.get(loss, ())
    for name in CONDITIONAL_LOSS_VALUES:
        if name in own:
            assert trial.params[name] == CONDITIONAL_LOSS_VALUES[name]
            assert getattr(config, name) == CONDITIONAL_LOSS_VALUES[name]
        else:
            assert name not in trial.params
            assert getattr(config, name) == getattr(DEFAULTS, name)
    expected = {p.arg: CONDITIONAL_LOSS_VALUES[p.field] for p in LOSS_PARAMS[loss]}
    assert config.loss_params() == expected
    build_loss(config.loss, **config.loss_params())  # the loss accepts what the space gives


@pytest.mark.parametrize("loss", sorted(LOSS_PARAM))
def test_conditional_loss_parameter_is_required_for_its_loss(loss: str) -> None:
    with pytest.raises(ValueError, match=LOSS_PARAM[loss][0]):
        _suggest(_params(loss=loss))


@pytest.mark.parametrize("penalty", PENALTIES)
def test_every_penalty_with_lambda_only_when_not_none(penalty: str) -> None:
    config, trial = _suggest(_params(penalty=penalty, penalty_lambda=1e-4))
    assert config.penalty == penalty
    if penalty == "none":
        assert "penalty_lambda" not in trial.params
        assert config.penalty_lambda == 0.0
    else:
        assert trial.params["penalty_lambda"] == 1e-4
        assert config.penalty_lambda == 1e-4


@pytest.mark.parametrize("optimizer", OPTIMIZERS)
def test_every_optimizer_with_its_own_parameters(optimizer: str) -> None:
    config, trial = _suggest(_params(optimizer=optimizer, lr=0.02, momentum=0.8, nesterov=True))
    assert config.optimizer == optimizer and config.lr == 0.02
    uses_momentum = optimizer in ("momentum", "rmsprop")
    assert ("momentum" in trial.params) == uses_momentum
    assert config.momentum == (0.8 if uses_momentum else DEFAULTS.momentum)
    assert ("nesterov" in trial.params) == (optimizer == "momentum")
    assert config.nesterov == (optimizer == "momentum")


@pytest.mark.parametrize("nesterov", [False, True])
def test_nesterov_choice_reaches_the_config(nesterov: bool) -> None:
    config, _ = _suggest(_params(optimizer="momentum", momentum=0.9, nesterov=nesterov))
    assert config.nesterov is nesterov


@pytest.mark.parametrize("depth", [0, 1, 2, 3])
def test_freeze_depth(depth: int) -> None:
    config, trial = _suggest(_params(freeze_depth=depth))
    assert config.freeze_depth == depth and trial.params["freeze_depth"] == depth


@pytest.mark.parametrize("batch_size", [16, 32, 64])
def test_batch_size(batch_size: int) -> None:
    config, _ = _suggest(_params(batch_size=batch_size))
    assert config.batch_size == batch_size


def test_distributions() -> None:
    _, trial = _suggest(_params(loss="huber", huber_delta=0.1, penalty="l2", penalty_lambda=1e-4,
                                optimizer="momentum", momentum=0.9, nesterov=False))
    d = trial.distributions
    assert d["loss"].choices == LOSS_NAMES
    assert d["penalty"].choices == PENALTIES
    assert d["optimizer"].choices == OPTIMIZERS
    assert d["batch_size"].choices == (16, 32, 64)
    assert d["nesterov"].choices == (False, True)
    assert (d["freeze_depth"].low, d["freeze_depth"].high) == (0, 3)
    assert d["lr"].log and d["penalty_lambda"].log and d["huber_delta"].log
    assert d["huber_delta"].high <= 1.0
    assert 0 < d["momentum"].low and d["momentum"].high < 1


def _check_valid(config: TrialConfig) -> None:
    """The config builds its loss, penalty and optimizer, as fine_tune will."""
    assert isinstance(config, TrialConfig)
    assert config.loss in LOSS_NAMES and config.penalty in PENALTIES
    assert config.optimizer in OPTIMIZERS
    assert 0 <= config.freeze_depth <= 3 and config.batch_size in (16, 32, 64)
    assert math.isfinite(config.lr) and 1e-4 <= config.lr <= 0.3
    assert config.epochs == 5 and config.seed == 42
    build_loss(config.loss, **config.loss_params())
    params = [torch.nn.Parameter(torch.zeros(2))]
    build_penalty(config.penalty, config.penalty_lambda, params=params, reference=params)
    build_optimizer(config.optimizer, params, lr=config.lr, momentum=config.momentum,
                    nesterov=config.nesterov, weight_decay=config.weight_decay)


def test_random_search_over_the_space() -> None:
    sampler = optuna.samplers.RandomSampler(seed=0)
    study = optuna.create_study(sampler=sampler, direction="maximize")
    configs: list[TrialConfig] = []

    def objective(trial: optuna.Trial) -> float:
        config = space(trial, Settings(epochs=5, seed=42))
        configs.append(config)
        return 0.0

    study.optimize(objective, n_trials=60)
    assert len(configs) == 60
    assert all(t.state == optuna.trial.TrialState.COMPLETE for t in study.trials)
    for config in configs:
        _check_valid(config)

    # The categorical choices never change from trial to trial.
    choices: dict[str, set[tuple[Any, ...]]] = {}
    for t in study.trials:
        for name, dist in t.distributions.items():
            if isinstance(dist, optuna.distributions.CategoricalDistribution):
                choices.setdefault(name, set()).add(tuple(dist.choices))
    assert {k: len(v) for k, v in choices.items()} == {
        "loss": 1, "penalty": 1, "optimizer": 1, "batch_size": 1, "nesterov": 1,
    }

    # Each loss's parameter appears exactly under that loss; momentum and nesterov likewise.
    for t, config in zip(study.trials, configs, strict=True):
        p = t.params
        for loss, names in LOSS_PARAM.items():
            for name in names:
                assert (name in p) == (p["loss"] == loss), (loss, p)
                if name in p:
                    assert getattr(config, name) == p[name]
        assert ("penalty_lambda" in p) == (p["penalty"] != "none")
        assert ("momentum" in p) == (p["optimizer"] in ("momentum", "rmsprop"))
        assert ("nesterov" in p) == (p["optimizer"] == "momentum")
        assert config.loss == p["loss"] and config.optimizer == p["optimizer"]
        assert config.freeze_depth == p["freeze_depth"] and config.batch_size == p["batch_size"]

    seen_losses = {c.loss for c in configs}
    assert seen_losses == set(LOSS_NAMES)  # the search reaches every branch
    assert {c.optimizer for c in configs} == set(OPTIMIZERS)
    assert {c.penalty for c in configs} == set(PENALTIES)


def test_lr_decay_is_searched_and_reaches_the_config() -> None:
    config, trial = _suggest(_params(lr_decay=0.6))
    assert config.lr_decay == 0.6
    d = trial.distributions["lr_decay"]
    assert 0 < d.low < d.high == 1.0  # 1 = one learning rate for every stage


def test_distill_is_offered_only_with_a_teacher() -> None:
    _, plain = _suggest(_params())
    assert "distill" not in plain.distributions["loss"].choices

    params = _params(loss="distill", distill_temperature=3.0, distill_alpha=0.4,
                     distill_base="label_smoothing", label_smoothing=0.1)
    trial = optuna.trial.FixedTrial(params)
    config = space(trial, Settings(epochs=7, seed=11, distill=True))
    assert trial.distributions["loss"].choices == (*LOSS_NAMES, "distill")
    assert (config.loss, config.distill_temperature, config.distill_alpha) == ("distill", 3.0, 0.4)
    assert (config.distill_base, config.label_smoothing) == ("label_smoothing", 0.1)
    assert trial.distributions["distill_base"].choices == LOSS_NAMES  # never distill itself
    assert trial.distributions["distill_temperature"].log
