"""The plain, frozen configuration of one fine-tuning run.

`spaces/` builds it from an Optuna trial; `objectives/` only ever sees this dataclass.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any

# Which config field feeds which loss's constructor argument (see objectives.losses).
_LOSS_PARAMS: dict[str, dict[str, str]] = {
    "label_smoothing": {"epsilon": "label_smoothing"},
    "focal": {"gamma": "focal_gamma"},
    "huber": {"delta": "huber_delta"},
    "kl": {"epsilon": "kl_smoothing"},
}


@dataclass(frozen=True)
class TrialConfig:
    # Loss and its parameter (only the one that belongs to `loss` is used).
    loss: str = "cross_entropy"
    label_smoothing: float = 0.1  # epsilon, probability mass spread over all classes
    focal_gamma: float = 2.0  # focusing exponent, 0 = cross-entropy
    huber_delta: float = 1.0  # switch point from quadratic to linear, in probability units
    kl_smoothing: float = 0.1  # epsilon of the smoothed target distribution
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
    batch_size: int = 32  # images per step
    epochs: int = 20
    seed: int = 0

    def __post_init__(self) -> None:
        positive = {"lr": self.lr, "batch_size": self.batch_size, "epochs": self.epochs}
        for name, value in positive.items():
            if not (isinstance(value, (int, float)) and math.isfinite(value) and value > 0):
                raise ValueError(f"{name} must be a positive number, got {value!r}")
        if self.freeze_depth < 0:
            raise ValueError(f"freeze_depth must be >= 0, got {self.freeze_depth!r}")
        if self.warmup_epochs < 0:
            raise ValueError(f"warmup_epochs must be >= 0, got {self.warmup_epochs!r}")
        if not (self.penalty_lambda >= 0 and math.isfinite(self.penalty_lambda)):
            raise ValueError(f"penalty_lambda must be >= 0, got {self.penalty_lambda!r}")

    def loss_params(self) -> dict[str, float]:
        """The keyword arguments of this config's loss."""
        fields = _LOSS_PARAMS.get(self.loss, {})
        return {arg: getattr(self, field) for arg, field in fields.items()}

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def replace(self, **changes: Any) -> TrialConfig:
        return dataclasses.replace(self, **changes)
