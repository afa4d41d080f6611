"""The offline `digits` task: scikit-learn's 8x8 digit images, a transfer set-up in miniature.

Source task: digits 0-4, used once to pretrain a small CNN (cached on disk with joblib.Memory).
Target task: digits 5-9 with few labels, so that fine-tuning choices matter.
"""

from __future__ import annotations

import functools
from pathlib import Path

import numpy as np
import torch
from joblib import Memory
from sklearn.datasets import load_digits

from objectives.data import ImageData, Split, Task, channel_stats, stratified_split
from objectives.models import StagedNet, new_head, small_cnn

SOURCE_CLASSES = (0, 1, 2, 3, 4)
TARGET_CLASSES = (5, 6, 7, 8, 9)
WIDTH = 32  # channels of the first stage; the CNN has about 290k parameters


def _digit_images() -> tuple[torch.Tensor, np.ndarray]:
    digits = load_digits()
    # Pixel values are 0-16; scale them to the 0-255 uint8 range every image task uses.
    x = np.round(digits.images * (255.0 / 16.0)).astype(np.uint8)
    return torch.from_numpy(x[:, None]), digits.target


def _subset(
    x: torch.Tensor, y: np.ndarray, classes: tuple[int, ...]
) -> tuple[torch.Tensor, np.ndarray]:
    keep = np.isin(y, classes)
    relabel = {c: i for i, c in enumerate(classes)}
    return x[torch.from_numpy(keep)], np.array([relabel[c] for c in y[keep]])


def pretrain_backbone(*, seed: int, epochs: int) -> dict[str, np.ndarray]:
    """Train the CNN on the source digits 0-4; returns its backbone's state as numpy arrays."""
    from objectives.config import TrialConfig
    from objectives.train import fine_tune

    x, y = _digit_images()
    x, y = _subset(x, y, SOURCE_CLASSES)
    mean, std = channel_stats(x)
    split = Split(x, torch.from_numpy(y))
    data = ImageData(split, split, split, tuple(map(str, SOURCE_CLASSES)), mean, std,
                     crop_padding=1)

    def scratch_model(head_seed: int) -> StagedNet:
        torch.manual_seed(head_seed)
        return small_cnn(len(SOURCE_CLASSES), width=WIDTH)

    config = TrialConfig(loss="cross_entropy", optimizer="adamw", lr=3e-3, weight_decay=5e-4,
                         batch_size=64, epochs=epochs, warmup_epochs=1, seed=seed)
    with torch.random.fork_rng(devices=[]):
        model = fine_tune(config, Task("digits-source", data, scratch_model)).model
    return {k: v.cpu().numpy() for k, v in model.state_dict().items() if k.startswith("stages.")}


def load_digits_task(
    *, cache_dir: str | Path | None, seed: int = 0, train_per_class: int = 30,
    pretrain_epochs: int = 30,
) -> Task:
    """The target task (digits 5-9) with a backbone pretrained on digits 0-4.

    `cache_dir` holds the pretrained backbone so only the first call pays for pretraining;
    None disables the cache.
    """
    pretrain = Memory(str(cache_dir) if cache_dir else None, verbose=0).cache(pretrain_backbone)
    backbone = pretrain(seed=seed, epochs=pretrain_epochs)

    x, y = _digit_images()
    x, y = _subset(x, y, TARGET_CLASSES)
    # Exactly `train_per_class` labelled images of each digit (a stratified split of the total
    # would round per class), then the rest halved into validation and test, stratified.
    rng = np.random.default_rng(seed)
    train = np.sort(np.concatenate([
        rng.choice(np.flatnonzero(y == c), size=train_per_class, replace=False)
        for c in range(len(TARGET_CLASSES))
    ]))
    rest = np.setdiff1d(np.arange(len(y)), train)
    val_part, test_part = stratified_split(y[rest], sizes=(0.5,), seed=seed)
    val, test = rest[val_part], rest[test_part]
    mean, std = channel_stats(x[torch.from_numpy(train)])
    labels = torch.from_numpy(y)

    def part(index: np.ndarray) -> Split:
        i = torch.from_numpy(index)
        return Split(x[i].contiguous(), labels[i].contiguous())

    data = ImageData(part(train), part(val), part(test), tuple(map(str, TARGET_CLASSES)),
                     mean, std, crop_padding=1)
    make_model = functools.partial(_pretrained_model, backbone=backbone)
    return Task("digits", data, make_model)


def _pretrained_model(seed: int, *, backbone: dict[str, np.ndarray]) -> StagedNet:
    model = small_cnn(len(SOURCE_CLASSES), width=WIDTH)
    state = {k: torch.from_numpy(v) for k, v in backbone.items()}
    missing, unexpected = model.load_state_dict(state, strict=False)
    if unexpected or any(not k.startswith("head.") for k in missing):
        raise RuntimeError(f"pretrained digits backbone does not fit: {missing} {unexpected}")
    new_head(model, len(TARGET_CLASSES), seed=seed)
    return model
