"""Small fake data sets in the real on-disk formats, with a signal a tiny model can learn.

Every class has its own mean colour (CIFAR, image folders) or a bright patch at its own place
(MNIST), plus noise; labels are balanced, so every class is in every split. `fake_images` is
how the writers make their pixels, so a test can compare what a loader returns with it.
"""

from __future__ import annotations

import gzip
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image

from search.bench.data import cifar_arrays, fake_images, fake_labels, write_cifar

# The CIFAR writer and the pixels of every writer are the product's (the GPU benchmark writes
# its data with them): one definition of the format; re-exported here for the tests.
__all__ = ["cifar_arrays", "fake_images", "fake_labels", "mnist_arrays", "write_cifar",
           "write_image_folder", "write_mnist"]


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
    test_per_class: int | None = None,
) -> Path:
    """root/<class>/<i>.<fmt>, or with split=True root/train/<class>/ and root/test/<class>/
    (`per_class` images of each class in each, or `test_per_class` in test/). `size` is
    (width, height), as in PIL."""
    width, height = size
    for part_seed, part in enumerate(("train", "test") if split else ("",)):
        count = test_per_class if part == "test" and test_per_class is not None else per_class
        labels = np.repeat(np.arange(len(classes)), count)
        images = fake_images(labels, (3, height, width), seed + part_seed)
        for label, name in enumerate(classes):
            folder = Path(root) / part / name
            folder.mkdir(parents=True, exist_ok=True)
            for i in range(count):
                image = images[label * count + i].transpose(1, 2, 0)
                Image.fromarray(image).save(folder / f"{i:04d}.{fmt}")
    return Path(root)
