"""Studies by name: each module defines one search space and the study's fixed settings."""

from __future__ import annotations

from spaces.base import Settings, Study, TaskOptions
from spaces.cifar10 import STUDY as CIFAR10
from spaces.cifar100 import STUDY as CIFAR100
from spaces.digits import STUDY as DIGITS
from spaces.imagefolder import STUDY as IMAGEFOLDER
from spaces.mnist import FASHION_MNIST, MNIST
from spaces.registry import canonical, from_entry_point, installed, is_reference, load_reference

STUDIES: dict[str, Study] = {
    study.name: study
    for study in (DIGITS, CIFAR10, CIFAR100, MNIST, FASHION_MNIST, IMAGEFOLDER)
}


def get_study(name: str) -> Study:
    """A study by name (shipped, or added by an installed package), or from a file
    (`my_study.py`) or module (`package.module:NAME`) reference; ValueError (one line) if none.
    """
    if name in STUDIES:
        return STUDIES[name]
    if is_reference(name):
        return load_reference(name)
    entry = installed().get(name)
    if entry is not None:
        return from_entry_point(name, entry)
    known = ", ".join(sorted({*STUDIES, *installed()}))
    raise ValueError(f"unknown study {name!r}; known studies: {known}; or give a file "
                     "my_study.py or a module package.module:NAME that defines it")


def available() -> list[tuple[str, str]]:
    """(name, what it is) of every study known by name: shipped, then installed."""
    found = [(name, study.description) for name, study in sorted(STUDIES.items())]
    for name, entry in sorted(installed().items()):
        if name not in STUDIES:
            found.append((name, f"installed: {entry.value}"))
    return found


__all__ = ["STUDIES", "Settings", "Study", "TaskOptions", "available", "canonical",
           "get_study", "is_reference"]
