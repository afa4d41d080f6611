"""Studies by name: each module defines one search space and the study's fixed settings.

Also the public API for a study of your own (see examples/own_model.py and the README's "Your
own study"): `Study` (its `recipes` too), `Settings`, `TaskOptions`, `image_study` and the image
studies' standard recipes (`IMAGE_RECIPES`), the shared space's `suggest_*` helpers, and from
`objectives` the `TrialConfig` a space returns, the `Task`, `ImageData` and `Split` a task
loader returns, and `StagedNet`, the staged model freeze depth and layer-wise rates work on.
"""

from __future__ import annotations

from objectives.config import TrialConfig
from objectives.data import ImageData, Split, Task, channel_stats
from objectives.models import StagedNet
from spaces.base import Settings, Study, TaskOptions
from spaces.cifar10 import STUDY as CIFAR10
from spaces.cifar10_transfer import STUDY as CIFAR10_TRANSFER
from spaces.cifar100 import STUDY as CIFAR100
from spaces.common import suggest_loss, suggest_optimizer, suggest_penalty, suggest_schedule
from spaces.curves import STUDY as CURVES
from spaces.digits import STUDY as DIGITS
from spaces.imagefolder import STUDY as IMAGEFOLDER
from spaces.mnist import FASHION_MNIST, MNIST
from spaces.registry import canonical, from_entry_point, installed, is_reference, load_reference
from spaces.vision import RECIPES as IMAGE_RECIPES
from spaces.vision import image_study

# The shipped studies, each from its module here. Written out, not discovered: this order is that
# of the lists the command line prints (tests/spaces_tests/test_registry.py checks that every
# study a module of spaces/ defines is here).
STUDIES: dict[str, Study] = {
    study.name: study
    for study in (DIGITS, CIFAR10, CIFAR10_TRANSFER, CIFAR100, MNIST, FASHION_MNIST, IMAGEFOLDER,
                  CURVES)
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


__all__ = [
    "IMAGE_RECIPES", "STUDIES", "ImageData", "Settings", "Split", "StagedNet", "Study", "Task",
    "TaskOptions", "TrialConfig", "available", "canonical", "channel_stats", "get_study",
    "image_study", "is_reference", "suggest_loss", "suggest_optimizer", "suggest_penalty",
    "suggest_schedule",
]
