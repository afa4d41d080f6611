"""The metric behind each value of a study's trials, and the one value tables, plots and
importances rank by."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import optuna
from optuna.trial import FrozenTrial

from search.study.optuna_study import OBJECTIVES
from search.study.settings import stored_objectives


@dataclass(frozen=True)
class Target:
    """The one value that tables and plots rank by: accuracy when the study optimizes it."""
    index: int
    name: str
    maximize: bool
    multi: bool  # a multi-objective study: Optuna needs the target spelled out

    def __call__(self, trial: FrozenTrial) -> float:
        return float(trial.values[self.index])

    def for_importances(self) -> Any:
        # None: the study's own objective. Else a target where low is good: Optuna 5's default
        # importance evaluator (PED-ANOVA) explains what makes a given target *low*.
        return None if not self.multi else (lambda t: -self(t)) if self.maximize else self


def pick_target(study: optuna.Study, metric: str) -> tuple[list[str], Target]:
    """The metric behind each value of a trial (as search.run names them), and the target."""
    metrics = [OBJECTIVES[n][0] for n in stored_objectives(study.user_attrs) if n in OBJECTIVES]
    if len(metrics) != len(study.directions):  # a study made outside search.run
        metrics = [metric, *(f"objective_{i}" for i in range(1, len(study.directions)))]
    # "Which loss fine-tunes best" is about accuracy: rank by it wherever the study has it.
    index = metrics.index("val_accuracy") if "val_accuracy" in metrics else 0
    maximize = study.directions[index] == optuna.study.StudyDirection.MAXIMIZE
    return metrics, Target(index, metrics[index], maximize, multi=len(metrics) > 1)
