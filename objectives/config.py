"""The plain, frozen configuration of one fine-tuning run.

`spaces/` builds it from an Optuna trial; `objectives/` only ever sees this dataclass.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from objectives.losses import DISTILL, LOSS_NAMES, LOSS_PARAMS, LossParam


@dataclass(frozen=True)
class TrialConfig:
    # Loss and its parameter (only the one that belongs to `loss` is used). Each loss's `params`
    # (objectives.losses) name the fields it reads, here and below.
    loss: str = "cross_entropy"
    label_smoothing: float = 0.1  # epsilon, probability mass spread over all classes
    focal_gamma: float = 2.0  # focusing exponent, 0 = cross-entropy
    huber_delta: float = 1.0  # switch point from quadratic to linear, in probability units
    kl_smoothing: float = 0.1  # epsilon of the smoothed target distribution
    # Knowledge distillation (loss "distill", needs a teacher): alpha * T^2 * KL(teacher ||
    # student) at temperature T, plus (1 - alpha) * the `distill_base` loss on the labels, whose
    # own parameter is the field above that belongs to it.
    distill_alpha: float = 0.5  # weight of the teacher term, in [0, 1]
    distill_temperature: float = 4.0  # softens both distributions; > 0
    distill_base: str = "cross_entropy"  # any loss but distill
    # Explicit penalty added to the loss: none, l1, l2, l2_sp; lambda per unit of squared norm.
    penalty: str = "none"
    penalty_lambda: float = 0.0
    # Optimizer and schedule.
    optimizer: str = "adamw"
    lr: float = 1e-3  # peak learning rate, after warmup
    momentum: float = 0.9  # for momentum SGD and RMSprop
    nesterov: bool = False
    weight_decay: float = 0.0  # the optimizer's own decay, on top of any penalty
    warmup_epochs: float = 1.0  # linear warmup, then cosine decay to 0 at the last step
    # Fine-tuning.
    freeze_depth: int = 0  # number of backbone stages frozen from the input side
    # Layer-wise lr: the head trains at lr, the deepest stage at lr * lr_decay, each stage below
    # at lr_decay times the one above it; 1.0 = one lr for everything. In (0, 1].
    lr_decay: float = 1.0
    batch_size: int = 32  # images per step
    resolution: int = 0  # side in pixels the images are resized to on the device; 0 = as stored
    epochs: int = 20
    seed: int = 0

    def __post_init__(self) -> None:
        positive = {"lr": self.lr, "batch_size": self.batch_size, "epochs": self.epochs}
        for name, value in positive.items():
            if not (isinstance(value, (int, float)) and math.isfinite(value) and value > 0):
                raise ValueError(f"{name} must be a positive number, got {value!r}")
        if not (isinstance(self.resolution, int) and self.resolution >= 0):
            raise ValueError(f"resolution must be 0 (as stored) or a side in pixels, got "
                             f"{self.resolution!r}")
        if self.freeze_depth < 0:
            raise ValueError(f"freeze_depth must be >= 0, got {self.freeze_depth!r}")
        if self.warmup_epochs < 0:
            raise ValueError(f"warmup_epochs must be >= 0, got {self.warmup_epochs!r}")
        if not (self.penalty_lambda >= 0 and math.isfinite(self.penalty_lambda)):
            raise ValueError(f"penalty_lambda must be >= 0, got {self.penalty_lambda!r}")
        if not 0.0 <= self.distill_alpha <= 1.0:  # also refuses NaN
            raise ValueError(f"distill_alpha must be in [0, 1], got {self.distill_alpha!r}")
        if not (math.isfinite(self.distill_temperature) and self.distill_temperature > 0):
            raise ValueError(f"distill_temperature must be a positive number, got "
                             f"{self.distill_temperature!r}")
        if self.distill_base not in LOSS_NAMES:
            raise ValueError(f"distill_base must be one of {', '.join(LOSS_NAMES)} (a loss on "
                             f"the labels, not {DISTILL!r}), got {self.distill_base!r}")
        if not 0.0 < self.lr_decay <= 1.0:
            raise ValueError(f"lr_decay must be in (0, 1], got {self.lr_decay!r}")

    def loss_params(self, name: str | None = None) -> dict[str, float]:
        """The keyword arguments of loss `name` (default: this config's loss) under this config.

        For distill these are its alpha and temperature; its base loss's are
        `loss_params(config.distill_base)` (objectives.train.build_criterion puts them together).
        """
        declared = LOSS_PARAMS.get(self.loss if name is None else name, ())
        return {p.arg: getattr(self, p.field) for p in declared}

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def replace(self, **changes: Any) -> TrialConfig:
        return dataclasses.replace(self, **changes)


def _check_loss_fields(declared: Mapping[str, tuple[LossParam, ...]]) -> None:
    """Every parameter a loss declares needs a float TrialConfig field of its name."""
    defaults = {f.name: f.default for f in dataclasses.fields(TrialConfig)}
    for loss, params in declared.items():
        for p in params:
            if not isinstance(defaults.get(p.field), float):
                raise TypeError(f"loss {loss!r} declares parameter {p.field!r}, which is not a "
                                f"float field of TrialConfig: add it there")


_check_loss_fields(LOSS_PARAMS)
