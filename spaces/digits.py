"""The `digits` study: fine-tune a CNN pretrained on digits 0-4 to digits 5-9, 30 labels a class.

Offline and small enough for a CPU: the quickstart and the end-to-end path of the tests.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from objectives.config import TrialConfig
from objectives.data import Task
from objectives.digits import load_digits_task
from spaces.base import Settings, Study, TaskOptions
from spaces.common import suggest_loss, suggest_optimizer, suggest_penalty

if TYPE_CHECKING:
    import optuna


def space(trial: optuna.Trial, settings: Settings) -> TrialConfig:
    return TrialConfig(
        **suggest_loss(trial, distill=settings.distill),
        **suggest_penalty(trial),
        **suggest_optimizer(trial),
        freeze_depth=trial.suggest_int("freeze_depth", 0, 3),  # 3 = linear probe
        batch_size=trial.suggest_categorical("batch_size", (16, 32, 64)),
        epochs=settings.epochs,
        seed=settings.seed,
    )


def load_task(options: TaskOptions) -> Task:
    return load_digits_task(cache_dir=options.cache_dir, seed=options.seed)


STUDY = Study(
    name="digits",
    space=space,
    load_task=load_task,
    epochs=20,  # per trial; about one second each on a 2-core CPU
    trials=40,  # default budget of finished trials
    seed=0,
    metric="val_accuracy",  # on 373 held-out images of digits 5-9
    direction="maximize",
    description="scikit-learn digits: pretrain on 0-4, fine-tune on 5-9 (offline, CPU)",
    # Its standard recipes, run as a new study's first trials: full fine-tuning with AdamW, and
    # with SGD and Nesterov momentum, at one learning rate for every layer, in batches of 16
    # (about 10 steps an epoch on the 150 training images: both reach about 0.98 validation
    # accuracy). This space searches no weight decay or warmup: TrialConfig's apply.
    recipes={
        "adamw": {"loss": "cross_entropy", "penalty": "none", "optimizer": "adamw", "lr": 1e-3,
                  "lr_decay": 1.0, "freeze_depth": 0, "batch_size": 16},
        "sgd": {"loss": "cross_entropy", "penalty": "none", "optimizer": "momentum",
                "lr": 0.01, "momentum": 0.9, "nesterov": True, "lr_decay": 1.0,
                "freeze_depth": 0, "batch_size": 16},
    },
)
