"""The space every image study shares (torchvision or timm backbones), and a maker of such studies.

On top of the digits space's loss, penalty and optimizer: the schedule, batch size, freeze
depth over the backbone's five stages, and the input resolution when the study searches it.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from objectives.config import TrialConfig
from objectives.data import Task
from spaces.base import Settings, Study, TaskOptions
from spaces.common import suggest_loss, suggest_optimizer, suggest_penalty, suggest_schedule

if TYPE_CHECKING:
    import optuna

RESOLUTIONS = (32, 64, 96, 128, 224)  # ImageNet backbones transfer better above 32x32
BATCH_SIZES = (16, 32, 64, 128, 256, 512)  # fitted to each study's data: search.study.batches
STAGES = 5  # objectives.backbones.NUM_STAGES; freeze depth 5 trains the head alone
DEFAULT_DATA_DIR = Path("data")
# The image studies' standard recipes (spaces.Study.recipes), run as a new study's first trials:
# fine-tuning as a tutorial does it, those of the quality benchmark (search/bench/quality.py).
# The batch size is the study's default; a searched resolution is drawn by the sampler.
RECIPES: dict[str, dict[str, Any]] = {
    "adamw": {"loss": "cross_entropy", "penalty": "none", "optimizer": "adamw", "lr": 1e-3,
              "lr_decay": 1.0, "warmup_epochs": 1.0, "weight_decay": 0.05, "freeze_depth": 0},
    "sgd": {"loss": "cross_entropy", "penalty": "none", "optimizer": "momentum", "lr": 0.01,
            "momentum": 0.9, "nesterov": True, "lr_decay": 1.0, "warmup_epochs": 1.0,
            "weight_decay": 5e-4, "freeze_depth": 0},
}


def space(trial: optuna.Trial, settings: Settings) -> TrialConfig:
    resolution = settings.resolution
    if resolution is None:
        resolution = trial.suggest_categorical("resolution", RESOLUTIONS)
    return TrialConfig(
        **suggest_loss(trial, distill=settings.distill),
        **suggest_penalty(trial),
        **suggest_optimizer(trial, lr=(1e-5, 0.3)),
        **suggest_schedule(trial),
        freeze_depth=trial.suggest_int("freeze_depth", 0, STAGES),
        batch_size=trial.suggest_categorical("batch_size", BATCH_SIZES),
        resolution=resolution,
        epochs=settings.epochs,
        seed=settings.seed,
    )


def load_task(options: TaskOptions, *, dataset: str, backbone: str) -> Task:
    from objectives.vision import load_vision_task  # torchvision's models load on use only

    return load_vision_task(
        dataset, data_dir=options.data_dir or DEFAULT_DATA_DIR,
        backbone=options.backbone or backbone, weights=options.weights,
        pretrained=options.pretrained, cache_dir=options.cache_dir, seed=options.seed,
    )


def image_study(
    name: str, *, dataset: str, epochs: int, trials: int, description: str,
    resolution: int | None = None, backbone: str = "resnet18",
    data_dir: Path | None = DEFAULT_DATA_DIR,
    recipes: Mapping[str, Mapping[str, Any]] = RECIPES,
) -> Study:
    """A study of `dataset` on a torchvision backbone over the shared image space, with its
    standard `recipes` (default: the image studies' RECIPES)."""
    return Study(
        name=name, space=space,
        load_task=functools.partial(load_task, dataset=dataset, backbone=backbone),
        epochs=epochs, trials=trials, description=description, backbone=backbone,
        resolution=resolution, resolutions=RESOLUTIONS, data_dir=data_dir,
        # A grid's fixed recipe: AdamW's usual fine-tuning decay, a mid-sized batch.
        defaults={"weight_decay": 0.05, "batch_size": 128}, recipes=recipes,
    )
