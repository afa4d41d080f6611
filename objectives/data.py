"""Image data held as uint8 tensors, split train / validation / test, and a task around it."""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
from sklearn.model_selection import train_test_split

from objectives.models import StagedNet


@dataclass(frozen=True)
class Split:
    x: torch.Tensor  # (N, C, H, W) uint8, 0-255
    y: torch.Tensor  # (N,) int64 class indices

    def __post_init__(self) -> None:
        if self.x.dtype != torch.uint8 or self.x.ndim != 4:
            raise ValueError(
                f"images must be uint8 (N, C, H, W), got {self.x.dtype} {tuple(self.x.shape)}"
            )
        if len(self.x) != len(self.y):
            raise ValueError(f"{len(self.x)} images but {len(self.y)} labels")

    def __len__(self) -> int:
        return len(self.y)

    def to(self, device: torch.device | str) -> Split:
        return Split(self.x.to(device), self.y.to(device))


@dataclass(frozen=True)
class ImageData:
    train: Split
    val: Split
    test: Split
    class_names: tuple[str, ...]
    mean: tuple[float, ...]  # per channel, in [0, 1] units, for normalization
    std: tuple[float, ...]
    crop_padding: int = 0  # pixels of padding for the random-crop augmentation (0 = none)
    flip: bool = False  # random horizontal flips (not for digits: a mirrored 2 is no 2)

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def normalize(self, x: torch.Tensor) -> torch.Tensor:
        """uint8 images to normalized float32, batched, on whatever device `x` lives.

        Grey images meet a three-channel normalization (an ImageNet backbone) by repeating
        their channel here, on the device, rather than storing three copies.
        """
        scale, shift = _affine(self.mean, self.std, x.device)
        if x.shape[1] == 1 and len(self.mean) > 1:
            x = x.expand(-1, len(self.mean), -1, -1)
        return torch.addcmul(shift, x.float(), scale)

    def resampled(self, seed: int) -> ImageData:
        """The same labelled pool (training + validation) split again, stratified, with `seed`,
        into parts of the same sizes; the test split is not read, and stays as it is.

        A race of finalists (search.execution.race) scores each on several such resamplings.
        They come from here rather than from the task loader with another seed: a loader's
        seed may move images in and out of test. The normalization stays the study's.
        """
        x = torch.cat((self.train.x, self.val.x.to(self.train.x.device)))
        y = torch.cat((self.train.y, self.val.y.to(self.train.y.device)))
        train, val = stratified_split(y.cpu().numpy(), sizes=(len(self.train),), seed=seed)
        pick = functools.partial(_take, x, y)
        return dataclasses.replace(self, train=pick(train), val=pick(val))

    def to(self, device: torch.device | str) -> ImageData:
        """The training and validation splits moved to `device` (the test split stays put)."""
        return dataclasses.replace(self, train=self.train.to(device), val=self.val.to(device))


def _take(x: torch.Tensor, y: torch.Tensor, indices: np.ndarray) -> Split:
    index = torch.as_tensor(indices, device=x.device)
    return Split(x[index], y[index])


@functools.cache
def _affine(
    mean: tuple[float, ...], std: tuple[float, ...], device: torch.device
) -> tuple[torch.Tensor, torch.Tensor]:
    # (x / 255 - mean) / std as one multiply-add, with constants made once per device: a
    # tensor built from Python floats each step would be a host-to-device copy each step.
    std_t = torch.tensor(std, dtype=torch.float32)
    scale = (1.0 / (255.0 * std_t)).view(1, -1, 1, 1)
    shift = (-torch.tensor(mean, dtype=torch.float32) / std_t).view(1, -1, 1, 1)
    return scale.to(device), shift.to(device)


@dataclass(frozen=True)
class Task:
    """The data, and a factory of the pretrained model with a new head."""

    name: str
    data: ImageData
    make_model: Callable[[int], StagedNet]  # seed of the new head -> model

    def resampled(self, seed: int) -> Task:
        """This task with its training and validation images split again (ImageData.resampled)."""
        return dataclasses.replace(self, data=self.data.resampled(seed))

    def to(self, device: torch.device | str) -> Task:
        """This task with its data on `device`: done once per process, not once per trial."""
        return dataclasses.replace(self, data=self.data.to(device))


def stratified_split(
    labels: np.ndarray, *, sizes: tuple[int | float, ...], seed: int
) -> tuple[np.ndarray, ...]:
    """Indices of disjoint, stratified parts of sizes `sizes`; the rest forms a last part.

    A size below 1 is a fraction of what the earlier parts left; a larger one is a count.
    """
    rest = np.arange(len(labels))
    parts = []
    for size in sizes:
        count = round(size * len(rest)) if size < 1 else int(size)
        taken, rest = train_test_split(
            rest, train_size=count, stratify=labels[rest], random_state=seed
        )
        parts.append(np.sort(taken))
    parts.append(np.sort(rest))
    return tuple(parts)


def channel_stats(x: torch.Tensor) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Per-channel mean and standard deviation of uint8 images, in [0, 1] units."""
    xf = x.float() / 255.0
    mean = xf.mean(dim=(0, 2, 3))
    std = xf.std(dim=(0, 2, 3)).clamp_min(1e-3)
    return tuple(mean.tolist()), tuple(std.tolist())
