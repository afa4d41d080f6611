"""Classification losses searched over when fine-tuning.

Every loss takes ``logits`` of shape (N, C) (any float dtype; bf16 is upcast because softmax,
log and pow lose too much precision in 8 mantissa bits) and integer class indices ``target`` of
shape (N,), and returns the scalar mean over the batch. ``distill`` also takes the teacher's
logits, so it sits apart from ``LOSSES``: a study without a teacher cannot train it.

Each loss declares its searched parameters (``LossParam``): the TrialConfig field, the search
range and the display name all come from there. A new parameter also needs its TrialConfig field.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = [
    "ALL_LOSSES",
    "ALL_LOSS_NAMES",
    "DISTILL",
    "LOSSES",
    "LOSS_NAMES",
    "LOSS_PARAMS",
    "BCELoss",
    "BrierLoss",
    "CrossEntropyLoss",
    "DistillLoss",
    "FocalLoss",
    "HuberLoss",
    "KLLoss",
    "LabelSmoothingLoss",
    "LossParam",
    "MAELoss",
    "build_loss",
]


def _check_inputs(logits: Tensor, target: Tensor) -> Tensor:
    """Validate shapes and return the logits as float32."""
    if logits.ndim != 2:
        raise ValueError(f"logits must be (N, C), got shape {tuple(logits.shape)}")
    if target.ndim != 1 or target.shape[0] != logits.shape[0]:
        raise ValueError(
            f"target must be (N,) = ({logits.shape[0]},), got shape {tuple(target.shape)}"
        )
    if target.dtype.is_floating_point or target.dtype == torch.bool:
        raise ValueError(f"target must hold integer class indices, got dtype {target.dtype}")
    return logits.float()


def _one_hot(target: Tensor, like: Tensor) -> Tensor:
    # scatter_ instead of F.one_hot: no host sync to check the index range, and no int64 matrix.
    return torch.zeros_like(like).scatter_(1, target.long().unsqueeze(1), 1.0)


def _check_epsilon(epsilon: float) -> float:
    epsilon = float(epsilon)
    if not 0.0 <= epsilon < 1.0:
        raise ValueError(f"epsilon must be in [0, 1), got {epsilon!r}")
    return epsilon


@dataclass(frozen=True)
class LossParam:
    """A searched parameter of a loss: constructor argument `arg`, fed from the TrialConfig field
    `field` (also its Optuna and MLflow name), searched over [low, high], on a log scale if `log`,
    and shown as `short` in the loss's cell of the progress display (None: a column of its own).
    """

    field: str
    arg: str
    low: float
    high: float
    log: bool = False
    short: str | None = None


class _Loss(nn.Module):
    """Base class: ``params`` declares the keyword options ``build_loss`` accepts, in the order
    the search space suggests them."""

    params: ClassVar[tuple[LossParam, ...]] = ()

    def forward(self, logits: Tensor, target: Tensor) -> Tensor:  # pragma: no cover
        raise NotImplementedError


class CrossEntropyLoss(_Loss):
    """Plain softmax cross-entropy, ``-log softmax(logits)[target]``.

    NLL on log-softmax outputs is the same function, which is why there is no separate ``nll``.
    """

    def forward(self, logits: Tensor, target: Tensor) -> Tensor:
        return F.cross_entropy(_check_inputs(logits, target), target)


class LabelSmoothingLoss(_Loss):
    """Cross-entropy against ``(1 - epsilon) * onehot + epsilon / C``.

    Same convention as ``F.cross_entropy(label_smoothing=epsilon)`` (the uniform part also
    covers the true class); Szegedy et al. 2016, "Rethinking the Inception Architecture".
    """

    params = (LossParam("label_smoothing", "epsilon", 0.01, 0.3, short="eps"),)

    def __init__(self, *, epsilon: float = 0.1) -> None:
        super().__init__()
        self.epsilon = _check_epsilon(epsilon)

    def forward(self, logits: Tensor, target: Tensor) -> Tensor:
        x = _check_inputs(logits, target)
        return F.cross_entropy(x, target, label_smoothing=self.epsilon)

    def extra_repr(self) -> str:
        return f"epsilon={self.epsilon}"


class FocalLoss(_Loss):
    """Focal loss ``-(1 - p_t)^gamma * log p_t`` (Lin et al. 2017, "Focal Loss for Dense Object
    Detection"), without the alpha class weighting. ``gamma = 0`` is cross-entropy; the paper's
    default is ``gamma = 2``.
    """

    params = (LossParam("focal_gamma", "gamma", 0.5, 5.0, short="gamma"),)

    def __init__(self, *, gamma: float = 2.0) -> None:
        super().__init__()
        gamma = float(gamma)
        if not (math.isfinite(gamma) and gamma >= 0.0):
            raise ValueError(f"gamma must be finite and >= 0, got {gamma!r}")
        self.gamma = gamma

    def forward(self, logits: Tensor, target: Tensor) -> Tensor:
        x = _check_inputs(logits, target)
        logp_t = F.log_softmax(x, dim=1).gather(1, target.long().unsqueeze(1)).squeeze(1)
        # 1 - p_t = -expm1(log p_t) keeps precision when p_t -> 1, where the modulating factor
        # matters. The clamp keeps d/dx x^gamma finite at x = 0 for gamma < 1 (else inf * 0 = nan
        # once a logit saturates); the clamped region has a zero gradient, which is the limit.
        one_minus_p = (-torch.expm1(logp_t)).clamp_min(torch.finfo(torch.float32).tiny)
        return (-one_minus_p.pow(self.gamma) * logp_t).mean()

    def extra_repr(self) -> str:
        return f"gamma={self.gamma}"


class BCELoss(_Loss):
    """One-vs-rest binary cross-entropy: ``binary_cross_entropy_with_logits`` of every logit
    against the one-hot target, averaged over both classes and batch (i.e. divided by N * C,
    not summed over classes).
    """

    def forward(self, logits: Tensor, target: Tensor) -> Tensor:
        x = _check_inputs(logits, target)
        return F.binary_cross_entropy_with_logits(x, _one_hot(target, x))


class BrierLoss(_Loss):
    """Squared error between softmax probabilities and the one-hot target, summed over classes
    and averaged over the batch: the multi-class Brier score (Brier 1950). Registered as ``mse``.
    """

    def forward(self, logits: Tensor, target: Tensor) -> Tensor:
        x = _check_inputs(logits, target)
        diff = x.softmax(dim=1) - _one_hot(target, x)
        return diff.square().sum(dim=1).mean()


class MAELoss(_Loss):
    """L1 distance between softmax probabilities and the one-hot target, summed over classes and
    averaged over the batch (equals ``2 * (1 - p_t)``). Bounded, hence robust to label noise
    (Ghosh et al. 2017, "Robust Loss Functions under Label Noise for Deep Neural Networks"),
    but slow to fit from a poor start.
    """

    def forward(self, logits: Tensor, target: Tensor) -> Tensor:
        x = _check_inputs(logits, target)
        diff = x.softmax(dim=1) - _one_hot(target, x)
        return diff.abs().sum(dim=1).mean()


class HuberLoss(_Loss):
    """torch's Huber loss ``F.huber_loss(probs, onehot, delta=delta)`` per element, summed over
    classes and averaged over the batch. Errors lie in [0, 1], so ``delta >= 1`` gives half the
    Brier score and ``delta -> 0`` tends to ``delta * mae``.
    """

    # Errors are probabilities in [0, 1]: a delta of 1 or more is plain (halved) MSE.
    params = (LossParam("huber_delta", "delta", 0.01, 1.0, log=True, short="delta"),)

    def __init__(self, *, delta: float = 1.0) -> None:
        super().__init__()
        delta = float(delta)
        if not (math.isfinite(delta) and delta > 0.0):
            raise ValueError(f"delta must be finite and > 0, got {delta!r}")
        self.delta = delta

    def forward(self, logits: Tensor, target: Tensor) -> Tensor:
        x = _check_inputs(logits, target)
        per_elem = F.huber_loss(
            x.softmax(dim=1), _one_hot(target, x), reduction="none", delta=self.delta
        )
        return per_elem.sum(dim=1).mean()

    def extra_repr(self) -> str:
        return f"delta={self.delta}"


class KLLoss(_Loss):
    """``KL(q || softmax(logits))`` with ``q = 1 - epsilon`` on the true class and
    ``epsilon / (C - 1)`` on each other class, averaged over the batch.

    Its gradient w.r.t. the logits, ``softmax(logits) - q``, equals that of cross-entropy
    against ``q``; the two differ by the entropy of ``q``, a constant, so the KL is 0 when the
    prediction equals ``q`` whereas label smoothing's value never reaches 0 for ``epsilon > 0``.
    Note that ``q`` excludes the true class from the uniform part, unlike ``label_smoothing``.
    """

    params = (LossParam("kl_smoothing", "epsilon", 0.01, 0.3, short="eps"),)

    def __init__(self, *, epsilon: float = 0.1) -> None:
        super().__init__()
        self.epsilon = _check_epsilon(epsilon)

    def forward(self, logits: Tensor, target: Tensor) -> Tensor:
        x = _check_inputs(logits, target)
        num_classes = x.shape[1]
        if num_classes < 2 and self.epsilon > 0.0:
            raise ValueError(f"kl with epsilon > 0 needs at least 2 classes, got {num_classes}")
        off = self.epsilon / (num_classes - 1) if num_classes > 1 else 0.0
        q = torch.full_like(x, off).scatter_(1, target.long().unsqueeze(1), 1.0 - self.epsilon)
        # xlogy gives 0 * log 0 = 0 for the zero entries of q when epsilon = 0.
        per_sample = (torch.xlogy(q, q) - q * F.log_softmax(x, dim=1)).sum(dim=1)
        return per_sample.mean()

    def extra_repr(self) -> str:
        return f"epsilon={self.epsilon}"


class DistillLoss(_Loss):
    """Knowledge distillation (Hinton et al. 2015, "Distilling the Knowledge in a Neural
    Network"): ``alpha * T^2 * KL(softmax(teacher / T) || softmax(student / T))`` plus
    ``(1 - alpha) * base(student, target)``. The KL is summed over classes, averaged over the
    batch. T^2 keeps the soft term's gradients, which shrink as 1/T^2, on the scale of the hard
    term's whatever the temperature.

    The teacher's logits are a constant: no gradient reaches the teacher. They may be inference
    tensors (made under ``torch.inference_mode``) in bf16: a float32 copy made here is an
    ordinary tensor that autograd may save for the backward pass.
    """

    # The space suggests these, then distill_base and that base loss's own parameters.
    params = (LossParam("distill_temperature", "temperature", 1.0, 10.0, log=True),
              LossParam("distill_alpha", "alpha", 0.1, 1.0))

    def __init__(
        self, *, alpha: float = 0.5, temperature: float = 4.0, base: nn.Module | None = None
    ) -> None:
        super().__init__()
        alpha, temperature = float(alpha), float(temperature)
        if not 0.0 <= alpha <= 1.0:
            raise ValueError(f"alpha must be in [0, 1], got {alpha!r}")
        if not (math.isfinite(temperature) and temperature > 0.0):
            raise ValueError(f"temperature must be finite and > 0, got {temperature!r}")
        self.alpha, self.temperature = alpha, temperature
        self.base = base if base is not None else CrossEntropyLoss()

    def forward(  # type: ignore[override]
        self, logits: Tensor, target: Tensor, teacher_logits: Tensor
    ) -> Tensor:
        x = _check_inputs(logits, target)
        if teacher_logits.shape != x.shape:
            raise ValueError(f"teacher logits have shape {tuple(teacher_logits.shape)}, the "
                             f"student's {tuple(x.shape)}: they must match")
        # Terms of weight 0 are skipped: 0 * inf would be NaN, and they cost a softmax each.
        hard = self.base(logits, target) if self.alpha < 1.0 else None
        if self.alpha == 0.0:
            assert hard is not None
            return hard
        t = self.temperature
        with torch.no_grad():  # a copy outside inference mode, float32, never differentiated
            teacher = teacher_logits.detach().to(torch.float32, copy=True)
            log_p = F.log_softmax(teacher / t, dim=1)
        kl = (log_p.exp() * (log_p - F.log_softmax(x / t, dim=1))).sum(dim=1).mean()
        soft = self.alpha * t * t * kl
        return soft if hard is None else soft + (1.0 - self.alpha) * hard

    def extra_repr(self) -> str:
        return f"alpha={self.alpha}, temperature={self.temperature}"


LOSSES: dict[str, type[_Loss]] = {
    "cross_entropy": CrossEntropyLoss,
    "label_smoothing": LabelSmoothingLoss,
    "focal": FocalLoss,
    "bce": BCELoss,
    "mse": BrierLoss,
    "mae": MAELoss,
    "huber": HuberLoss,
    "kl": KLLoss,
}

# The losses of the labels alone: what a study without a teacher searches, and what distill
# may mix in. Distill is registered apart, so that these choices stay those of every study.
LOSS_NAMES: tuple[str, ...] = tuple(sorted(LOSSES))
DISTILL = "distill"
ALL_LOSSES: dict[str, type[_Loss]] = {**LOSSES, DISTILL: DistillLoss}
ALL_LOSS_NAMES: tuple[str, ...] = tuple(sorted(ALL_LOSSES))
LOSS_PARAMS: dict[str, tuple[LossParam, ...]] = {n: c.params for n, c in ALL_LOSSES.items()}


def build_loss(name: str, **params: float) -> nn.Module:
    """Instantiate the loss registered as ``name`` with its keyword options.

    Options: the ``arg`` of each parameter the loss declares in ``params`` (``LOSS_PARAMS``:
    focal's gamma, say); a loss that declares none takes none. Distill's base is cross-entropy
    (objectives.train.build_criterion builds another). Options left out get the class defaults.
    """
    try:
        cls = ALL_LOSSES[name]
    except (KeyError, TypeError):
        raise ValueError(f"unknown loss {name!r}; known losses: {', '.join(LOSS_NAMES)}; "
                         f"and {DISTILL} (with a teacher)") from None
    accepted = sorted(p.arg for p in cls.params)
    unexpected = sorted(set(params) - set(accepted))
    if unexpected:
        takes = ", ".join(accepted) if accepted else "no parameters"
        raise ValueError(
            f"loss {name!r} got unexpected parameter(s) {', '.join(unexpected)}; it takes: {takes}"
        )
    return cls(**params)
