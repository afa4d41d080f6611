from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from objectives.losses import ALL_LOSSES, DISTILL, LOSS_NAMES, LOSSES, DistillLoss, build_loss

# Two samples x three classes; expected values below are computed with numpy, not the module.
LOGITS = np.array([[2.0, 1.0, 0.1], [0.5, 2.5, -1.0]])
TARGET = np.array([0, 2])
# The parameters a loss is built with below; a loss not named here gets its class defaults.
DEFAULT_PARAMS: dict[str, dict[str, float]] = {
    "label_smoothing": {"epsilon": 0.1},
    "focal": {"gamma": 2.0},
    "huber": {"delta": 0.5},
    "kl": {"epsilon": 0.1},
}


def _np_softmax(x: np.ndarray) -> np.ndarray:
    e = np.exp(x - x.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


def _np_onehot(t: np.ndarray, c: int) -> np.ndarray:
    return np.eye(c)[t]


def _tensors() -> tuple[torch.Tensor, torch.Tensor]:
    return torch.tensor(LOGITS, dtype=torch.float32), torch.tensor(TARGET)


def _loss(name: str, **params: float) -> float:
    logits, target = _tensors()
    return build_loss(name, **params)(logits, target).item()


def test_registry() -> None:
    # The registry is the list: every test that goes over the losses takes it from LOSSES.
    assert LOSS_NAMES == tuple(sorted(LOSSES)) and LOSS_NAMES
    assert DISTILL not in LOSSES and ALL_LOSSES == {**LOSSES, DISTILL: DistillLoss}
    assert all(isinstance(build_loss(name), nn.Module) for name in LOSS_NAMES)
    assert len(set(LOSSES.values())) == len(LOSSES)  # no class under two names
    assert set(DEFAULT_PARAMS) <= set(LOSS_NAMES)  # the values above name registered losses


def test_cross_entropy_by_hand() -> None:
    p = _np_softmax(LOGITS)
    expected = -np.mean(np.log(p[np.arange(2), TARGET]))
    assert _loss("cross_entropy") == pytest.approx(expected, rel=1e-6)
    logits, target = _tensors()
    assert _loss("cross_entropy") == pytest.approx(F.cross_entropy(logits, target).item())


@pytest.mark.parametrize("eps", [0.0, 0.1, 0.4])
def test_label_smoothing(eps: float) -> None:
    logp = np.log(_np_softmax(LOGITS))
    q = (1 - eps) * _np_onehot(TARGET, 3) + eps / 3
    expected = -np.mean(np.sum(q * logp, axis=1))
    assert _loss("label_smoothing", epsilon=eps) == pytest.approx(expected, rel=1e-6)
    logits, target = _tensors()
    ref = F.cross_entropy(logits, target, label_smoothing=eps).item()
    assert _loss("label_smoothing", epsilon=eps) == pytest.approx(ref, rel=1e-6)


@pytest.mark.parametrize("gamma", [0.5, 2.0, 5.0])
def test_focal_by_hand(gamma: float) -> None:
    pt = _np_softmax(LOGITS)[np.arange(2), TARGET]
    expected = np.mean(-((1 - pt) ** gamma) * np.log(pt))
    assert _loss("focal", gamma=gamma) == pytest.approx(expected, rel=1e-5)


def test_focal_gamma_zero_is_cross_entropy() -> None:
    torch.manual_seed(0)
    logits, target = torch.randn(16, 7) * 3, torch.randint(0, 7, (16,))
    focal = build_loss("focal", gamma=0.0)(logits, target)
    torch.testing.assert_close(focal, F.cross_entropy(logits, target))


def test_bce_by_hand_and_reference() -> None:
    y = _np_onehot(TARGET, 3)
    expected = np.mean(np.logaddexp(0, LOGITS) - y * LOGITS)  # mean over N * C
    assert _loss("bce") == pytest.approx(expected, rel=1e-6)
    logits, target = _tensors()
    ref = F.binary_cross_entropy_with_logits(logits, F.one_hot(target, 3).float()).item()
    assert _loss("bce") == pytest.approx(ref, rel=1e-6)


def test_mse_is_brier_score() -> None:
    d = _np_softmax(LOGITS) - _np_onehot(TARGET, 3)
    assert _loss("mse") == pytest.approx(np.mean(np.sum(d**2, axis=1)), rel=1e-6)


def test_mae_by_hand() -> None:
    p = _np_softmax(LOGITS)
    d = p - _np_onehot(TARGET, 3)
    expected = np.mean(np.sum(np.abs(d), axis=1))
    assert _loss("mae") == pytest.approx(expected, rel=1e-6)
    # L1 to a one-hot is 2 * (1 - p_t).
    assert expected == pytest.approx(np.mean(2 * (1 - p[np.arange(2), TARGET])))


@pytest.mark.parametrize("delta", [0.05, 0.5, 1.0])
def test_huber_by_hand_and_reference(delta: float) -> None:
    a = np.abs(_np_softmax(LOGITS) - _np_onehot(TARGET, 3))
    per = np.where(a < delta, 0.5 * a**2, delta * (a - 0.5 * delta))
    assert _loss("huber", delta=delta) == pytest.approx(np.mean(per.sum(axis=1)), rel=1e-6)
    logits, target = _tensors()
    ref = F.huber_loss(
        logits.softmax(1), F.one_hot(target, 3).float(), reduction="none", delta=delta
    )
    assert _loss("huber", delta=delta) == pytest.approx(ref.sum(1).mean().item(), rel=1e-6)


def test_huber_limits_relate_to_mse_and_mae() -> None:
    # Errors are in [0, 1]: delta >= 1 is purely quadratic, tiny delta purely linear.
    assert _loss("huber", delta=1.0) == pytest.approx(0.5 * _loss("mse"), rel=1e-6)
    delta = 1e-4
    assert _loss("huber", delta=delta) / delta == pytest.approx(_loss("mae"), rel=1e-3)


@pytest.mark.parametrize("eps", [0.0, 0.1, 0.3])
def test_kl_by_hand(eps: float) -> None:
    q = np.where(_np_onehot(TARGET, 3) == 1, 1 - eps, eps / 2)
    logp = np.log(_np_softmax(LOGITS))
    qlogq = np.where(q > 0, q * np.log(np.where(q > 0, q, 1.0)), 0.0)
    expected = np.mean(np.sum(qlogq - q * logp, axis=1))
    assert _loss("kl", epsilon=eps) == pytest.approx(expected, rel=1e-5)
    logits, target = _tensors()
    ref = F.kl_div(
        logits.log_softmax(1), torch.tensor(q, dtype=torch.float32), reduction="batchmean"
    )
    assert _loss("kl", epsilon=eps) == pytest.approx(ref.item(), rel=1e-5, abs=1e-7)


@pytest.mark.parametrize("eps", [0.1, 0.3])
def test_kl_zero_at_target_distribution(eps: float) -> None:
    c = 5
    target = torch.tensor([0, 3, 4])
    q = torch.full((3, c), eps / (c - 1)).scatter_(1, target[:, None], 1 - eps)
    loss = build_loss("kl", epsilon=eps)(q.log(), target)
    assert loss.item() == pytest.approx(0.0, abs=1e-6)
    # Label smoothing's value is the entropy of its target there, not 0.
    assert build_loss("label_smoothing", epsilon=eps)(q.log(), target).item() > 0.1


def test_kl_gradient_equals_cross_entropy_against_q() -> None:
    torch.manual_seed(1)
    eps, c = 0.2, 4
    logits = torch.randn(6, c, requires_grad=True)
    target = torch.randint(0, c, (6,))
    build_loss("kl", epsilon=eps)(logits, target).backward()
    q = torch.full((6, c), eps / (c - 1)).scatter_(1, target[:, None], 1 - eps)
    expected = (logits.detach().softmax(1) - q) / 6
    torch.testing.assert_close(logits.grad, expected)


@pytest.mark.parametrize("name", LOSS_NAMES)
@pytest.mark.parametrize("scale", [1.0, 100.0])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_finite_loss_and_gradients(name: str, scale: float, dtype: torch.dtype) -> None:
    torch.manual_seed(2)
    base = torch.randn(8, 5) * scale
    base[0] = torch.tensor([100.0, -100.0, 0.0, 100.0, -100.0])  # saturated softmax
    target = torch.randint(0, 5, (8,))
    target[0] = 0
    logits = base.to(dtype).requires_grad_(True)
    loss = build_loss(name, **DEFAULT_PARAMS.get(name, {}))(logits, target)
    assert loss.dtype == torch.float32 and loss.ndim == 0
    assert torch.isfinite(loss)
    loss.backward()
    assert logits.grad is not None and logits.grad.dtype == dtype
    assert torch.isfinite(logits.grad).all()


@pytest.mark.parametrize("gamma", [0.0, 0.3, 1.0])
def test_focal_confident_correct_has_finite_zero_gradient(gamma: float) -> None:
    logits = torch.tensor([[200.0, -200.0, 0.0]], requires_grad=True)
    loss = build_loss("focal", gamma=gamma)(logits, torch.tensor([0]))
    loss.backward()
    assert loss.item() == pytest.approx(0.0, abs=1e-30)
    assert logits.grad is not None and torch.isfinite(logits.grad).all()


def test_unknown_name_lists_known_losses() -> None:
    with pytest.raises(ValueError) as info:
        build_loss("xyz")
    msg = str(info.value)
    assert "unknown loss 'xyz'" in msg
    assert "known losses: " + ", ".join(LOSS_NAMES) in msg


@pytest.mark.parametrize(
    ("name", "params", "bad"),
    [
        ("cross_entropy", {"epsilon": 0.1}, "epsilon"),
        ("focal", {"gamma": 2.0, "alpha": 0.25}, "alpha"),
        ("label_smoothing", {"delta": 1.0}, "delta"),
    ],
)
def test_unexpected_params_are_named(name: str, params: dict[str, float], bad: str) -> None:
    with pytest.raises(ValueError, match=bad):
        build_loss(name, **params)


@pytest.mark.parametrize(
    ("name", "params"),
    [
        ("label_smoothing", {"epsilon": -0.1}),
        ("label_smoothing", {"epsilon": 1.0}),
        ("label_smoothing", {"epsilon": math.nan}),
        ("kl", {"epsilon": 1.5}),
        ("focal", {"gamma": -1.0}),
        ("focal", {"gamma": math.inf}),
        ("huber", {"delta": 0.0}),
        ("huber", {"delta": math.nan}),
    ],
)
def test_bad_parameter_values_raise(name: str, params: dict[str, float]) -> None:
    key, value = next(iter(params.items()))
    with pytest.raises(ValueError, match=key) as info:
        build_loss(name, **params)
    assert repr(float(value)) in str(info.value)


def test_bad_input_shapes_raise() -> None:
    loss = build_loss("cross_entropy")
    with pytest.raises(ValueError, match="logits"):
        loss(torch.zeros(3), torch.zeros(3, dtype=torch.long))
    with pytest.raises(ValueError, match="target"):
        loss(torch.zeros(3, 2), torch.zeros(4, dtype=torch.long))
