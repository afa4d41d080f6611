"""The offline `cifar10-transfer` task: transfer learning on real photographs, no downloads.

Source task: CIFAR-10's 25,000 training images of airplane, automobile, bird, cat and deer, used
once to pretrain a small five-stage CNN from random weights (cached on disk with joblib.Memory,
like the digits backbone). Target task: dog, frog, horse, ship and truck, with 100 labelled
training images a class and 200 a class of validation, both drawn (seeded) from their training
images, and their official test images (1,000 a class) as the test split, which only a refit
reads. The source classes never enter the target's data, and the target's never the source's.

The backbone is pretrained with one fixed seed whatever the study's seed: it stands for the
pretrained model a user brings, and a study's seed varies the target's split and training only.
"""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Any

import numpy as np
import torch
from joblib import Memory

from objectives.data import ImageData, Task, channel_stats
from objectives.datasets import CIFAR10_CLASSES, read_cifar10, to_split
from objectives.errors import InputError
from objectives.models import StagedNet, five_stage_cnn, new_head

SOURCE_CLASSES = CIFAR10_CLASSES[:5]  # airplane, automobile, bird, cat, deer
TARGET_CLASSES = CIFAR10_CLASSES[5:]  # dog, frog, horse, ship, truck
TRAIN_PER_CLASS = 100
VAL_PER_CLASS = 200
PRETRAIN_EPOCHS = 15
PRETRAIN_SEED = 0
CROP_PADDING = 4  # pixels, CIFAR's usual random crop


def _subset(x: np.ndarray, y: np.ndarray, classes: list[int]) -> tuple[np.ndarray, np.ndarray]:
    """The images of `classes`, relabelled 0..len(classes)-1 in that order."""
    keep = np.isin(y, classes)
    relabel = np.full(max(classes) + 1, -1, np.int64)
    relabel[classes] = np.arange(len(classes))
    return np.ascontiguousarray(x[keep]), relabel[y[keep]]


def pretrain_backbone(
    train_x: np.ndarray, train_y: np.ndarray, test_x: np.ndarray, test_y: np.ndarray, *,
    seed: int, epochs: int,
) -> dict[str, Any]:
    """Train the five-stage CNN on the source classes from random weights.

    Returns its stages' state as numpy arrays ("state"), the source training images' channel
    statistics the target is normalized with ("mean", "std": the pretrained weights' own input
    statistics, as ImageNet's are for torchvision's) and its accuracy on the source's test
    images ("source_accuracy").
    """
    from objectives.config import TrialConfig
    from objectives.train import fine_tune

    train, test = to_split(train_x, train_y), to_split(test_x, test_y)
    mean, std = channel_stats(train.x)
    data = ImageData(train, test, test, SOURCE_CLASSES, mean, std, crop_padding=CROP_PADDING,
                     flip=True)

    def scratch_model(head_seed: int) -> StagedNet:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(head_seed)
            return five_stage_cnn(len(SOURCE_CLASSES))

    config = TrialConfig(loss="cross_entropy", optimizer="adamw", lr=3e-3, weight_decay=0.05,
                         batch_size=128, epochs=epochs, warmup_epochs=1, seed=seed)
    with torch.random.fork_rng(devices=[]):
        result = fine_tune(config, Task("cifar10-source", data, scratch_model))
    state = {k: v.cpu().numpy() for k, v in result.model.state_dict().items()
             if k.startswith("stages.")}
    return {"state": state, "mean": mean, "std": std,
            "source_accuracy": result.final["val_accuracy"]}


def load_transfer_task(
    *, data_dir: str | Path, cache_dir: str | Path | None, seed: int = 0,
    train_per_class: int = TRAIN_PER_CLASS, val_per_class: int = VAL_PER_CLASS,
    pretrain_epochs: int = PRETRAIN_EPOCHS,
) -> Task:
    """The target task (dog, frog, horse, ship, truck) on the backbone pretrained on the source
    classes. `data_dir` holds CIFAR-10 (objectives.datasets.read_cifar10); `cache_dir` keeps
    the decoded images and the pretrained backbone, so only the first call pays for them."""
    parts, names = read_cifar10(data_dir, cache_dir=cache_dir)
    source = [names.index(c) for c in SOURCE_CLASSES]
    target = [names.index(c) for c in TARGET_CLASSES]
    (train_x, train_y), (test_x, test_y) = parts["train"], parts["test"]
    tx, ty = _subset(train_x, train_y, target)
    need = train_per_class + val_per_class
    counts = np.bincount(ty, minlength=len(target))
    small = int(np.argmin(counts))
    if counts[small] < need:
        raise InputError(f"class {TARGET_CLASSES[small]!r} has {counts[small]} training images "
                         f"in {data_dir}; the cifar10-transfer task needs {need} a class "
                         f"({train_per_class} to train on, {val_per_class} to validate on)")
    test = to_split(*_subset(test_x, test_y, target))
    if len(test) == 0:
        raise InputError(f"the test split of {data_dir} has no images of the target classes "
                         f"({', '.join(TARGET_CLASSES)})")
    pretrain = Memory(str(cache_dir) if cache_dir else None, verbose=0).cache(pretrain_backbone)
    backbone = pretrain(*_subset(train_x, train_y, source), *_subset(test_x, test_y, source),
                        seed=PRETRAIN_SEED, epochs=pretrain_epochs)
    # Exactly `train_per_class` and `val_per_class` images of each class, drawn with `seed`.
    rng = np.random.default_rng(seed)
    drawn = [rng.permutation(np.flatnonzero(ty == c)) for c in range(len(target))]
    train = np.sort(np.concatenate([d[:train_per_class] for d in drawn]))
    val = np.sort(np.concatenate([d[train_per_class:need] for d in drawn]))
    data = ImageData(to_split(tx[train], ty[train]), to_split(tx[val], ty[val]), test,
                     TARGET_CLASSES, backbone["mean"], backbone["std"],
                     crop_padding=CROP_PADDING, flip=True)
    make_model = functools.partial(_pretrained_model, state=backbone["state"])
    return Task("cifar10-transfer", data, make_model)


def _pretrained_model(seed: int, *, state: dict[str, np.ndarray]) -> StagedNet:
    model = five_stage_cnn(len(SOURCE_CLASSES))
    missing, unexpected = model.load_state_dict(
        {k: torch.from_numpy(v) for k, v in state.items()}, strict=False)
    if unexpected or any(not k.startswith("head.") for k in missing):
        raise RuntimeError(f"pretrained backbone does not fit: {missing} {unexpected}")
    new_head(model, len(TARGET_CLASSES), seed=seed)
    return model
