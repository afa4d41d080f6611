"""Optimizers and the learning-rate schedule.

The schedule is a pure function of the step (as nanoGPT's ``get_lr``) applied with ``set_lr``,
rather than a stateful ``LRScheduler``: nothing to checkpoint, and layer-wise learning rates
only need a per-group ``base_lr``.
"""

from __future__ import annotations

import math
import operator
from collections.abc import Iterable
from typing import Any

import torch
from torch import Tensor

__all__ = ["OPTIMIZERS", "build_optimizer", "lr_factor", "set_lr"]

OPTIMIZERS: tuple[str, ...] = ("sgd", "momentum", "adam", "adamw", "rmsprop")

ParamsT = Iterable[Tensor] | Iterable[dict[str, Any]]


def _check_lr(lr: Any, what: str) -> float:
    if isinstance(lr, Tensor):
        raise ValueError(f"{what} must be a float, got a tensor")
    lr = float(lr)
    if not (math.isfinite(lr) and lr > 0.0):
        raise ValueError(f"{what} must be finite and > 0, got {lr!r}")
    return lr


def build_optimizer(
    name: str,
    params: ParamsT,
    *,
    lr: float,
    momentum: float = 0.9,
    nesterov: bool = False,
    weight_decay: float = 0.0,
    fused: bool = False,
) -> torch.optim.Optimizer:
    """Build optimizer ``name`` and record each group's initial lr as ``group["base_lr"]``.

    ``params`` is an iterable of parameters or of param-group dicts (a group's own ``"lr"``
    overrides ``lr``). ``momentum`` is used by ``momentum`` (SGD) and ``rmsprop``; ``nesterov``
    only by ``momentum``; both are ignored by the others (``sgd`` is SGD without momentum, and
    Adam/AdamW keep torch's betas (0.9, 0.999)). ``weight_decay`` is always passed explicitly,
    so AdamW does not silently use its own default of 0.01; it is coupled L2 for all but AdamW
    (Loshchilov & Hutter 2019, "Decoupled Weight Decay Regularization"). ``fused`` asks for
    torch's fused kernels (one launch per step instead of one per tensor; callers set it on
    CUDA). RMSprop has no fused kernel (torch 2.14's ``RMSprop`` takes no ``fused`` argument):
    it gets the multi-tensor ``foreach`` kernels instead, a few launches per step.
    """
    if name not in OPTIMIZERS:
        raise ValueError(f"unknown optimizer {name!r}; known optimizers: {', '.join(OPTIMIZERS)}")
    lr = _check_lr(lr, "lr")
    momentum = float(momentum)
    if not 0.0 <= momentum < 1.0:
        raise ValueError(f"momentum must be in [0, 1), got {momentum!r}")
    weight_decay = float(weight_decay)
    if not (math.isfinite(weight_decay) and weight_decay >= 0.0):
        raise ValueError(f"weight_decay must be finite and >= 0, got {weight_decay!r}")
    if not isinstance(nesterov, bool):
        raise ValueError(f"nesterov must be a bool, got {nesterov!r}")
    if name == "momentum" and nesterov and momentum == 0.0:
        raise ValueError("nesterov=True needs momentum > 0, got momentum=0.0")

    groups: list[Any] = list(params)
    for i, p in enumerate(groups):
        if isinstance(p, dict) and "lr" in p:
            _check_lr(p["lr"], f"param group {i} lr")

    opt: torch.optim.Optimizer
    kernel: dict[str, Any] = {"fused": True} if fused else {}
    if name == "sgd":
        opt = torch.optim.SGD(groups, lr=lr, momentum=0.0, weight_decay=weight_decay, **kernel)
    elif name == "momentum":
        opt = torch.optim.SGD(groups, lr=lr, momentum=momentum, nesterov=nesterov,
                              weight_decay=weight_decay, **kernel)
    elif name == "adam":
        opt = torch.optim.Adam(groups, lr=lr, weight_decay=weight_decay, **kernel)
    elif name == "adamw":
        opt = torch.optim.AdamW(groups, lr=lr, weight_decay=weight_decay, **kernel)
    else:  # rmsprop
        opt = torch.optim.RMSprop(groups, lr=lr, momentum=momentum, weight_decay=weight_decay,
                                  **({"foreach": True} if fused else {}))

    for group in opt.param_groups:
        group["base_lr"] = float(group["lr"])
    return opt


def lr_factor(
    step: int, *, total_steps: int, warmup_steps: int = 0, final_factor: float = 0.0
) -> float:
    """Multiplier of ``base_lr`` at ``step`` (0-based): linear warmup, then cosine decay.

    - ``step < warmup_steps``: ``(step + 1) / warmup_steps``, so the first step is already
      non-zero and the last warmup step reaches the peak 1.0.
    - then ``final + (1 - final) * (1 + cos(pi * t)) / 2`` with
      ``t = (step - warmup_steps) / (total_steps - warmup_steps)``: 1.0 at ``warmup_steps`` and
      exactly ``final_factor`` at ``step == total_steps``, one past the last training step (as
      ``CosineAnnealingLR(T_max=total_steps)``), so no step is spent at lr 0 when
      ``final_factor = 0``. Steps past ``total_steps`` stay at ``final_factor``.

    Cosine decay: Loshchilov & Hutter 2017, "SGDR"; warmup: Goyal et al. 2017, "Accurate,
    Large Minibatch SGD".
    """
    step = operator.index(step)
    total_steps = operator.index(total_steps)
    warmup_steps = operator.index(warmup_steps)
    final_factor = float(final_factor)
    if total_steps < 1:
        raise ValueError(f"total_steps must be >= 1, got {total_steps}")
    if not 0 <= warmup_steps <= total_steps:
        raise ValueError(
            f"warmup_steps must be in [0, total_steps={total_steps}], got {warmup_steps}"
        )
    if not 0.0 <= final_factor <= 1.0:
        raise ValueError(f"final_factor must be in [0, 1], got {final_factor!r}")
    if step < 0:
        raise ValueError(f"step must be >= 0, got {step}")

    if step < warmup_steps:
        return (step + 1) / warmup_steps
    if step >= total_steps:
        return final_factor
    t = (step - warmup_steps) / (total_steps - warmup_steps)
    return final_factor + (1.0 - final_factor) * 0.5 * (1.0 + math.cos(math.pi * t))


def set_lr(optimizer: torch.optim.Optimizer, factor: float) -> float:
    """Set every group's ``lr = base_lr * factor``; return the first group's new lr."""
    factor = float(factor)
    if not (math.isfinite(factor) and factor >= 0.0):
        raise ValueError(f"factor must be finite and >= 0, got {factor!r}")
    for i, group in enumerate(optimizer.param_groups):
        if "base_lr" not in group:
            raise ValueError(
                f"param group {i} has no 'base_lr'; build the optimizer with build_optimizer"
            )
        group["lr"] = group["base_lr"] * factor
    return float(optimizer.param_groups[0]["lr"])
