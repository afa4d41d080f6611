"""Image-classification tasks: a data set from disk and a pretrained backbone with a new head."""

from __future__ import annotations

import functools
from pathlib import Path

import torch

from objectives.backbones import backbone_stats, build_backbone, load_weights
from objectives.data import ImageData, Task
from objectives.datasets import load_dataset
from objectives.models import StagedNet

# Mirrored digits are not digits; every other data set here is left-right symmetric in meaning.
NO_FLIP = frozenset({"mnist"})


def load_vision_task(
    dataset: str, *, data_dir: str | Path, backbone: str, weights: str | Path | None = None,
    pretrained: bool = True, cache_dir: str | Path | None = None, seed: int = 0,
    download: bool = True,
) -> Task:
    """`dataset` from `data_dir` (downloaded there when missing and `download`), fine-tuned
    from `backbone` with ImageNet weights, a local state dict (`weights`) or random weights.

    Images are normalized with the statistics the pretrained weights expect (ImageNet's, or a
    timm model's own from its pretrained_cfg); the random crop pads by an eighth of the side
    (4 pixels at 32x32), as is usual on CIFAR.
    """
    splits = load_dataset(dataset, data_dir, seed=seed, cache_dir=cache_dir, download=download)
    state = load_weights(backbone, weights=weights, pretrained=pretrained)
    side = int(splits.train.x.shape[-1])
    mean, std = backbone_stats(backbone)
    data = ImageData(splits.train, splits.val, splits.test, splits.class_names,
                     mean, std, crop_padding=max(1, round(side / 8)),
                     flip=dataset not in NO_FLIP)
    make_model = functools.partial(_model, backbone=backbone, num_classes=data.num_classes,
                                   state=state)
    return Task(f"{dataset}-{backbone}", data, make_model)


def _model(seed: int, *, backbone: str, num_classes: int,
           state: dict[str, torch.Tensor] | None) -> StagedNet:
    return build_backbone(backbone, num_classes, state=state, seed=seed)
