"""What every study is: a define-by-run space, a task loader and its fixed settings."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

from objectives.config import TrialConfig
from objectives.data import Task

if TYPE_CHECKING:
    import optuna


class Space(Protocol):
    def __call__(self, trial: optuna.Trial, *, epochs: int, seed: int) -> TrialConfig: ...


@dataclass(frozen=True)
class Study:
    name: str
    space: Space  # turns a trial into a TrialConfig: the only place with suggest_* calls
    load_task: Callable[..., Task]  # (*, cache_dir: Path | None, seed: int) -> Task
    epochs: int  # epochs per trial
    trials: int  # default budget of finished (complete or pruned) trials
    seed: int = 0  # seeds the sampler, the data split and every trial's training
    metric: str = "val_accuracy"  # reported every epoch, returned at the end, optimized
    direction: str = "maximize"
    description: str = ""

    def task(self, *, cache_dir: Path | None, seed: int) -> Task:
        return self.load_task(cache_dir=cache_dir, seed=seed)
