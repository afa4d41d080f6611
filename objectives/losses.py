"""Classification losses searched over when fine-tuning.

Every loss takes ``logits`` of shape (N, C) (any float dtype; bf16 is upcast because softmax,
log and pow lose too much precision in 8 mantissa bits) and integer class indices ``target`` of
shape (N,), and returns the scalar mean over the batch.
"""

from __future__ import annotations

import math
from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = [
    "LOSSES",
    "LOSS_NAMES",
    "BCELoss",
    "BrierLoss",
    "CrossEntropyLoss",
    "FocalLoss",
    "HuberLoss",
    "KLLoss",
    "LabelSmoothingLoss",
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


class _Loss(nn.Module):
    """Base class: ``param_names`` lists the keyword options ``build_loss`` accepts."""

    param_names: ClassVar[tuple[str, ...]] = ()

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

    param_names = ("epsilon",)

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

    param_names = ("gamma",)

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

    param_names = ("delta",)

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

    param_names = ("epsilon",)

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


LOSSES: dict[str, type[nn.Module]] = {
    "cross_entropy": CrossEntropyLoss,
    "label_smoothing": LabelSmoothingLoss,
    "focal": FocalLoss,
    "bce": BCELoss,
    "mse": BrierLoss,
    "mae": MAELoss,
    "huber": HuberLoss,
    "kl": KLLoss,
}

LOSS_NAMES: tuple[str, ...] = tuple(sorted(LOSSES))


def build_loss(name: str, **params: float) -> nn.Module:
    """Instantiate the loss registered as ``name`` with its keyword options.

    Options: label_smoothing(epsilon), focal(gamma), huber(delta), kl(epsilon); the others take
    none. Options left out get the class defaults.
    """
    try:
        cls = LOSSES[name]
    except (KeyError, TypeError):
        raise ValueError(f"unknown loss {name!r}; known losses: {', '.join(LOSS_NAMES)}") from None
    accepted: tuple[str, ...] = getattr(cls, "param_names", ())
    unexpected = sorted(set(params) - set(accepted))
    if unexpected:
        takes = ", ".join(accepted) if accepted else "no parameters"
        raise ValueError(
            f"loss {name!r} got unexpected parameter(s) {', '.join(unexpected)}; it takes: {takes}"
        )
    return cls(**params)
