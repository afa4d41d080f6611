"""What every study is: a define-by-run space, a task loader and its fixed settings."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from objectives.config import TrialConfig
from objectives.data import Task

if TYPE_CHECKING:
    import optuna

    from objectives.train import FineTuneResult


@dataclass(frozen=True)
class Settings:
    """What every trial of one study shares; fixed for the life of the study."""

    epochs: int
    seed: int
    resolution: int | None = 0  # image side on the device; 0 = as stored, None = searched
    distill: bool = False  # the study has a teacher: its space offers the distill loss


@dataclass(frozen=True)
class TaskOptions:
    """Where a study's data and pretrained weights come from (the command line's options)."""

    seed: int = 0  # of the data split
    cache_dir: Path | None = None  # decoded data and pretrained backbones, on disk
    data_dir: Path | None = None  # None: the study's default
    backbone: str | None = None  # None: the study's default
    weights: Path | None = None  # a local state dict instead of the weights API's download
    pretrained: bool = True  # False: random initial weights
    time_scale: float | None = None  # a simulating study's sleep per simulated second (None:
    # its default)


class Space(Protocol):
    def __call__(self, trial: optuna.Trial, settings: Settings) -> TrialConfig: ...


@dataclass(frozen=True)
class Study:
    name: str
    space: Space  # turns a trial into a TrialConfig: the only place with suggest_* calls
    load_task: Callable[[TaskOptions], Task]
    epochs: int  # epochs per trial
    trials: int  # default budget of finished (complete or pruned) trials
    seed: int = 0  # seeds the sampler, the data split and every trial's training
    metric: str = "val_accuracy"  # reported every epoch, returned at the end, optimized
    direction: str = "maximize"
    description: str = ""
    # Image-model studies: the default torchvision backbone (None: the study brings its own
    # model, and --backbone, --weights and --no-pretrained do not apply) ...
    backbone: str | None = None
    # ... the default resolution (0 = as stored, None = searched) and the searchable ones.
    resolution: int | None = 0
    resolutions: tuple[int, ...] = ()
    data_dir: Path | None = None  # default data directory (None: the study needs none)
    # A grid search's value of a parameter neither --grid nor --fix gives (else TrialConfig's
    # default of the same name, when the space's range holds it).
    defaults: Mapping[str, Any] = field(default_factory=dict)
    # How a trial trains: None is objectives.train.fine_tune; a stand-in with its signature
    # simulates training instead (the curves study: no model is trained, nothing to refit).
    train: Callable[..., FineTuneResult] | None = None
    # Standard recipes, which a new study runs as its first trials: name -> parameters, under
    # the space's parameter names and with the values Optuna records. A parameter a recipe
    # leaves out is completed as a grid's point is (`defaults` above), else drawn by the
    # sampler. search.run's --recipes chooses among them.
    recipes: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)

    @property
    def simulated(self) -> bool:
        return self.train is not None

    def task(self, options: TaskOptions) -> Task:
        return self.load_task(options)
