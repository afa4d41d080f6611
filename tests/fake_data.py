"""Small fake data sets in the real on-disk formats, with a signal a tiny model can learn.

Every class has its own mean colour (CIFAR, image folders) or a bright patch at its own place
(MNIST), plus noise; labels are balanced, so every class is in every split. `fake_images` is
how the writers make their pixels, so a test can compare what a loader returns with it.
"""

from __future__ import annotations

import gzip
import pickle
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image
from torchvision import datasets as tv_datasets


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


def mnist_arrays(
    *, train: int = 300, test: int = 100, seed: int = 0
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """The train images (N, 28, 28), train labels, test images and labels `write_mnist` writes."""
    y_train, y_test = fake_labels(train, 10, seed), fake_labels(test, 10, seed + 1)
    x_train = fake_images(y_train, (1, 28, 28), seed)[:, 0]
    x_test = fake_images(y_test, (1, 28, 28), seed + 1)[:, 0]
    return x_train, y_train, x_test, y_test


def _idx_bytes(array: np.ndarray) -> bytes:
    header = bytes([0, 0, 0x08, array.ndim]) + np.array(array.shape, ">i4").tobytes()
    return header + array.astype(np.uint8).tobytes()


def write_mnist(
    root: Path, *, variant: str = "mnist", train: int = 300, test: int = 100, gz: bool = False,
    seed: int = 0,
) -> Path:
    """idx files in torchvision's layout: root/MNIST/raw/ or root/FashionMNIST/raw/."""
    folders = {"mnist": "MNIST", "fashion_mnist": "FashionMNIST"}
    if variant not in folders:
        raise ValueError(f"variant must be one of {sorted(folders)}, got {variant!r}")
    raw = Path(root) / folders[variant] / "raw"
    raw.mkdir(parents=True, exist_ok=True)
    arrays = mnist_arrays(train=train, test=test, seed=seed)
    names = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte",
             "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")
    for name, array in zip(names, arrays, strict=True):
        data = _idx_bytes(array)
        if gz:
            (raw / f"{name}.gz").write_bytes(gzip.compress(data))
        else:
            (raw / name).write_bytes(data)
    return Path(root)


def write_image_folder(
    root: Path, *, classes: Sequence[str] = ("cat", "dog", "frog"), per_class: int = 20,
    size: tuple[int, int] = (32, 32), split: bool = False, fmt: str = "png", seed: int = 0,
) -> Path:
    """root/<class>/<i>.<fmt>, or with split=True root/train/<class>/ and root/test/<class>/
    (`per_class` images of each class in each). `size` is (width, height), as in PIL."""
    width, height = size
    for part_seed, part in enumerate(("train", "test") if split else ("",)):
        labels = np.repeat(np.arange(len(classes)), per_class)
        images = fake_images(labels, (3, height, width), seed + part_seed)
        for label, name in enumerate(classes):
            folder = Path(root) / part / name
            folder.mkdir(parents=True, exist_ok=True)
            for i in range(per_class):
                image = images[label * per_class + i].transpose(1, 2, 0)
                Image.fromarray(image).save(folder / f"{i:04d}.{fmt}")
    return Path(root)
