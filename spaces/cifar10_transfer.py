"""`cifar10-transfer`: fine-tuning on real photographs, offline, on a CPU.

A five-stage CNN pretrained from scratch on five CIFAR-10 classes (airplane, automobile, bird, cat,
deer) is fine-tuned to the other five (dog, frog, horse, ship, truck) from 100 labelled images a
class (objectives.transfer). `--data-dir` holds CIFAR-10 as torchvision's batches or as JPEG
folders; nothing is downloaded. The space is the image studies' (spaces.vision), at 32x32.
"""

from __future__ import annotations

from pathlib import Path

from objectives.data import Task
from spaces.base import Study, TaskOptions
from spaces.vision import DEFAULT_DATA_DIR, RECIPES, space


def load_task(options: TaskOptions) -> Task:
    from objectives.transfer import load_transfer_task  # torch and the readers load on use

    return load_transfer_task(data_dir=options.data_dir or DEFAULT_DATA_DIR,
                              cache_dir=options.cache_dir, seed=options.seed)


STUDY = Study(
    name="cifar10-transfer",
    space=space,
    load_task=load_task,
    epochs=15,  # per trial: about 5 s on a 2-core CPU
    trials=40,
    metric="val_accuracy",  # on 1,000 held-out training images of the target classes
    description="real photographs offline: a CNN pretrained on 5 CIFAR-10 classes, fine-tuned "
                "on the other 5 with 100 labels a class (--data-dir with CIFAR-10)",
    resolution=0,  # as stored: 32x32
    data_dir=Path(DEFAULT_DATA_DIR),
    defaults={"weight_decay": 0.05, "batch_size": 64},  # 64: the quality benchmark's batch
    recipes=RECIPES,
)
