"""Studies by name: each module defines one search space and the study's fixed settings."""

from __future__ import annotations

from spaces.base import Settings, Study, TaskOptions
from spaces.cifar10 import STUDY as CIFAR10
from spaces.cifar100 import STUDY as CIFAR100
from spaces.digits import STUDY as DIGITS
from spaces.imagefolder import STUDY as IMAGEFOLDER
from spaces.mnist import FASHION_MNIST, MNIST

STUDIES: dict[str, Study] = {
    study.name: study
    for study in (DIGITS, CIFAR10, CIFAR100, MNIST, FASHION_MNIST, IMAGEFOLDER)
}


def get_study(name: str) -> Study:
    try:
        return STUDIES[name]
    except KeyError:
        known = ", ".join(sorted(STUDIES))
        raise ValueError(f"unknown study {name!r}; known studies: {known}") from None


__all__ = ["STUDIES", "Settings", "Study", "TaskOptions", "get_study"]
