"""A study of your own: your model and your data, searched over this tool's losses, penalties,
optimizers and freeze depths, without editing the package.

    python -m search.run --study examples/own_model.py --trials 8
    python -m search.report --study own-model        # found again by the name it stored

A study is a `spaces.Study`: a name, a define-by-run space (an Optuna trial to a TrialConfig),
a task loader (your data and a factory of your model), and its default epochs and budget. Here
the data are in-memory tensors (three classes of noisy 16x16 stripe patterns) and the model a
small CNN: put your own tensors and your own pretrained module in their place.
"""

from __future__ import annotations

import torch
from torch import nn

from spaces import (
    ImageData,
    Settings,
    Split,
    StagedNet,
    Study,
    Task,
    TaskOptions,
    TrialConfig,
    channel_stats,
    suggest_loss,
    suggest_optimizer,
    suggest_penalty,
)

CLASSES = ("horizontal", "vertical", "diagonal")


def _images(count: int, generator: torch.Generator) -> Split:
    """uint8 images (N, 1, 16, 16) and their labels: stripes of one direction, plus noise."""
    labels = torch.arange(count) % len(CLASSES)
    rows, cols = torch.meshgrid(torch.arange(16), torch.arange(16), indexing="ij")
    patterns = torch.stack([rows % 4 < 2, cols % 4 < 2, (rows + cols) % 4 < 2]).float()
    noise = torch.rand(count, 16, 16, generator=generator)
    images = 0.6 * patterns[labels] + 0.8 * noise
    return Split((images.clamp(0, 1) * 255).to(torch.uint8).unsqueeze(1), labels)


def make_model(seed: int) -> StagedNet:
    """Your model as ordered stages (freeze depth d freezes the first d) and a linear head.

    Load your pretrained weights here. A model you cannot split into stages is one stage:
    StagedNet([body], head), and its freeze depth is 0 (fine-tune all) or 1 (train the head).
    """
    torch.manual_seed(seed)
    stages = [
        nn.Sequential(nn.Conv2d(1, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(),
                      nn.MaxPool2d(2)),
        nn.Sequential(nn.Conv2d(16, 32, 3, padding=1), nn.BatchNorm2d(32), nn.ReLU()),
    ]
    return StagedNet(stages, nn.Linear(32, len(CLASSES)))


def load_task(options: TaskOptions) -> Task:
    generator = torch.Generator().manual_seed(options.seed)
    train, val, test = (_images(n, generator) for n in (150, 150, 300))
    mean, std = channel_stats(train.x)
    return Task("own-model", ImageData(train, val, test, CLASSES, mean, std), make_model)


def space(trial, settings: Settings) -> TrialConfig:  # type: ignore[no-untyped-def]
    return TrialConfig(
        **suggest_loss(trial, distill=settings.distill),
        **suggest_penalty(trial),
        **suggest_optimizer(trial),
        freeze_depth=trial.suggest_int("freeze_depth", 0, 2),  # 2 = train the head alone
        batch_size=trial.suggest_categorical("batch_size", (16, 32)),
        epochs=settings.epochs,
        seed=settings.seed,
    )


STUDY = Study(
    name="own-model", space=space, load_task=load_task, epochs=4, trials=8,
    description="your own model on your own tensors (examples/own_model.py)",
)
