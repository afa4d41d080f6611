"""The files the GPU benchmark runs on, written here: nothing is downloaded.

CIFAR-10/100 in torchvision's extracted on-disk format, with a class signal a small model can
learn (the tests write theirs with the same functions), and a backbone's random weights as a
state dict for `--weights`.
"""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np


def fake_labels(count: int, classes: int, seed: int) -> np.ndarray:
    """`count` labels, balanced over `classes` (each class at least once when count allows)."""
    return np.random.default_rng(seed).permutation(np.arange(count) % classes).astype(np.int64)


def fake_images(labels: np.ndarray, shape: tuple[int, int, int], seed: int) -> np.ndarray:
    """uint8 images (N, C, H, W): a per-class mean colour, or a per-class patch for one channel."""
    rng = np.random.default_rng(seed)
    channels, height, width = shape
    classes = int(labels.max()) + 1
    noise = rng.normal(0.0, 25.0, size=(len(labels), *shape))
    if channels == 1:  # grey: a bright 7x7 patch whose place depends on the class
        base = np.full((classes, *shape), 30.0)
        for c in range(classes):
            top, left = 3 + 8 * (c // 4 % 3), 3 + 6 * (c % 4)  # inside 28x28 for c < 12
            base[c, :, top:top + 7, left:left + 7] = 220.0
    else:
        colours = np.random.default_rng(12345).uniform(30, 225, size=(classes, channels))
        base = np.broadcast_to(colours[:, :, None, None], (classes, *shape))
    return np.clip(base[labels] + noise, 0, 255).round().astype(np.uint8)


def cifar_arrays(
    *, classes: int = 10, train: int = 300, test: int = 100, seed: int = 0
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """The train images, train labels, test images and test labels `write_cifar` writes."""
    y_train, y_test = fake_labels(train, classes, seed), fake_labels(test, classes, seed + 1)
    x_train = fake_images(y_train, (3, 32, 32), seed)
    x_test = fake_images(y_test, (3, 32, 32), seed + 1)
    return x_train, y_train, x_test, y_test


def _pickle(path: Path, entry: dict[bytes, object]) -> None:
    with open(path, "wb") as f:
        pickle.dump(entry, f, protocol=2)


def write_cifar(
    root: Path, *, classes: int = 10, train: int = 300, test: int = 100, seed: int = 0
) -> Path:
    """torchvision's extracted CIFAR-10 (classes=10) or CIFAR-100 (classes=100) under `root`.

    CIFAR-100 with 100 classes needs train >= 1000 for a 10% stratified validation split.
    """
    from torchvision import datasets as tv_datasets

    if classes not in (10, 100):
        raise ValueError(f"classes must be 10 or 100, got {classes}")
    x_train, y_train, x_test, y_test = cifar_arrays(
        classes=classes, train=train, test=test, seed=seed)
    names = [f"class{c:02d}".encode() for c in range(classes)]
    cls = tv_datasets.CIFAR10 if classes == 10 else tv_datasets.CIFAR100
    label_key = b"labels" if classes == 10 else b"fine_labels"
    folder = Path(root) / cls.base_folder
    folder.mkdir(parents=True, exist_ok=True)
    batches = zip(cls.train_list + cls.test_list,
                  [*np.array_split(np.arange(train), len(cls.train_list)), None], strict=True)
    for (filename, _), index in batches:
        x, y = (x_train[index], y_train[index]) if index is not None else (x_test, y_test)
        _pickle(folder / filename, {b"batch_label": filename.encode(), label_key: y.tolist(),
                                    b"data": x.reshape(len(x), -1),
                                    b"filenames": [f"{i}.png".encode() for i in range(len(x))]})
    _pickle(folder / cls.meta["filename"], {cls.meta["key"].encode(): names})
    return Path(root)


def write_weights(path: Path, *, backbone: str = "resnet18", seed: int = 0) -> Path:
    """torchvision's `backbone` with random weights from `seed`, as `--weights` reads a file
    (torchvision's key names): the weights `build_backbone` starts from, head aside."""
    import torch
    from torchvision.models import get_model

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        state = get_model(backbone, weights=None).state_dict()
    torch.save(state, path)
    return Path(path)
