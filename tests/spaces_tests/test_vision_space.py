from __future__ import annotations

from typing import Any

import optuna
import pytest

from objectives.backbones import NUM_STAGES
from objectives.config import TrialConfig
from spaces import STUDIES, Settings, get_study
from spaces.vision import BATCH_SIZES, RESOLUTIONS, STAGES, space

# The shipped studies on a torchvision backbone, from the registry.
IMAGE_STUDIES = tuple(name for name, study in STUDIES.items() if study.backbone is not None)


def _params(**changes: Any) -> dict[str, Any]:
    params: dict[str, Any] = {
        "loss": "focal", "focal_gamma": 2.5, "penalty": "l2_sp", "penalty_lambda": 1e-4,
        "optimizer": "momentum", "lr": 0.05, "lr_decay": 0.8, "momentum": 0.9, "nesterov": True,
        "warmup_epochs": 0.5, "weight_decay": 5e-4, "freeze_depth": 2, "batch_size": 128,
    }
    params.update(changes)
    return params


def test_every_image_study_is_registered_with_this_space() -> None:
    assert {"cifar10", "mnist"} <= set(IMAGE_STUDIES)
    for name in IMAGE_STUDIES:
        study = get_study(name)
        assert study.space is space and study.backbone == "resnet18"
        assert study.resolutions == RESOLUTIONS
    assert get_study("digits").backbone is None  # brings its own CNN
    transfer = get_study("cifar10-transfer")  # brings its own CNN, on this space, at 32x32
    assert transfer.backbone is None and transfer.space is space and transfer.resolution == 0
    curves = get_study("curves")  # this space over simulated training: no data, no model
    assert curves.space is space and curves.simulated and curves.data_dir is None
    assert not any(get_study(n).simulated for n in STUDIES if n != "curves")
    assert get_study("imagefolder").data_dir is None  # the user's folder is required
    assert get_study("cifar10").resolution is None  # searched by default


def test_freeze_depth_spans_every_stage_of_every_backbone() -> None:
    assert STAGES == NUM_STAGES


def test_fixed_resolution_is_not_a_parameter() -> None:
    trial = optuna.trial.FixedTrial(_params())
    config = space(trial, Settings(epochs=4, seed=3, resolution=64))
    assert isinstance(config, TrialConfig)
    assert config.resolution == 64 and "resolution" not in trial.params
    assert (config.loss, config.focal_gamma) == ("focal", 2.5)
    assert (config.penalty, config.penalty_lambda) == ("l2_sp", 1e-4)
    assert (config.optimizer, config.lr, config.momentum, config.nesterov) == (
        "momentum", 0.05, 0.9, True)
    assert (config.warmup_epochs, config.weight_decay) == (0.5, 5e-4)
    assert (config.freeze_depth, config.batch_size) == (2, 128)
    assert (config.epochs, config.seed) == (4, 3)


@pytest.mark.parametrize("resolution", RESOLUTIONS)
def test_searched_resolution(resolution: int) -> None:
    trial = optuna.trial.FixedTrial(_params(resolution=resolution))
    config = space(trial, Settings(epochs=4, seed=0, resolution=None))
    assert config.resolution == resolution and trial.params["resolution"] == resolution


def test_random_search_stays_in_bounds_with_stable_choices() -> None:
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0),
                                direction="maximize")
    configs: list[TrialConfig] = []

    def objective(trial: optuna.Trial) -> float:
        configs.append(space(trial, Settings(epochs=2, seed=0, resolution=None)))
        return 0.0

    study.optimize(objective, n_trials=80)
    for config in configs:
        assert 0 <= config.freeze_depth <= NUM_STAGES
        assert config.batch_size in BATCH_SIZES and config.resolution in RESOLUTIONS
        assert 1e-6 <= config.weight_decay <= 0.1 and 0 <= config.warmup_epochs <= 2
        assert 1e-5 <= config.lr <= 0.3
    assert {c.resolution for c in configs} == set(RESOLUTIONS)
    assert {c.freeze_depth for c in configs} == set(range(NUM_STAGES + 1))
    choices = {name: {tuple(t.distributions[name].choices) for t in study.trials
                      if name in t.distributions}
               for name in ("resolution", "batch_size", "loss", "optimizer")}
    assert all(len(found) == 1 for found in choices.values())
