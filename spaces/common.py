"""The parts of the search space every study shares: loss, penalty, optimizer.

Each helper makes its `suggest_*` calls and returns TrialConfig keyword arguments. Conditional
parameters are plain `if`s, so a trial only carries the parameters that apply to it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from objectives.losses import DISTILL, LOSS_NAMES, LOSS_PARAMS
from objectives.optim import OPTIMIZERS
from objectives.penalties import PENALTIES

if TYPE_CHECKING:
    import optuna


def suggest_loss(trial: optuna.Trial, *, distill: bool = False) -> dict[str, Any]:
    """The loss and its parameter; `distill` (a study with a teacher) also offers distillation.

    A distilling trial searches its temperature, its weight alpha, and the loss on the labels
    it mixes in (with that loss's own parameter, under the same names as when it stands alone).
    """
    loss = trial.suggest_categorical("loss", (*LOSS_NAMES, DISTILL) if distill else LOSS_NAMES)
    params: dict[str, Any] = {"loss": loss, **_loss_parameters(trial, loss)}
    if loss == DISTILL:
        base = trial.suggest_categorical("distill_base", LOSS_NAMES)
        params.update({"distill_base": base, **_loss_parameters(trial, base)})
    return params


def _loss_parameters(trial: optuna.Trial, loss: str) -> dict[str, Any]:
    """The parameters `loss` declares, in their order, each under its TrialConfig field's name."""
    return {p.field: trial.suggest_float(p.field, p.low, p.high, log=p.log)
            for p in LOSS_PARAMS.get(loss, ())}


def suggest_penalty(
    trial: optuna.Trial, *, low: float = 1e-7, high: float = 1e-2
) -> dict[str, Any]:
    penalty = trial.suggest_categorical("penalty", PENALTIES)
    params: dict[str, Any] = {"penalty": penalty}
    if penalty != "none":
        params["penalty_lambda"] = trial.suggest_float("penalty_lambda", low, high, log=True)
    return params


def suggest_optimizer(
    trial: optuna.Trial, *, lr: tuple[float, float] = (1e-4, 0.3)
) -> dict[str, Any]:
    optimizer = trial.suggest_categorical("optimizer", OPTIMIZERS)
    params: dict[str, Any] = {
        "optimizer": optimizer,
        "lr": trial.suggest_float("lr", *lr, log=True),
    }
    if optimizer in ("momentum", "rmsprop"):
        params["momentum"] = trial.suggest_float("momentum", 0.5, 0.99)
    if optimizer == "momentum":
        params["nesterov"] = trial.suggest_categorical("nesterov", (False, True))
    # Layer-wise rates: each backbone stage at lr_decay times the one above (1 = one rate).
    params["lr_decay"] = trial.suggest_float("lr_decay", 0.3, 1.0)
    return params


def suggest_schedule(
    trial: optuna.Trial, *, warmup: tuple[float, float] = (0.0, 2.0),
    weight_decay: tuple[float, float] = (1e-6, 0.1),
) -> dict[str, Any]:
    """Warmup epochs and the optimizer's own weight decay (on top of any explicit penalty)."""
    return {
        "warmup_epochs": trial.suggest_float("warmup_epochs", *warmup),
        "weight_decay": trial.suggest_float("weight_decay", *weight_decay, log=True),
    }
