from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from objectives.penalties import PENALTIES, build_penalty


def _params() -> list[nn.Parameter]:
    return [
        nn.Parameter(torch.tensor([1.0, -2.0, 0.0])),
        nn.Parameter(torch.tensor([[0.5, -0.5], [3.0, 0.25]])),
    ]


def test_names() -> None:
    assert PENALTIES == ("none", "l1", "l2", "l2_sp")


def test_none_is_zero_and_inactive() -> None:
    pen = build_penalty("none", 1.0, params=_params())
    value = pen()
    assert not pen.active
    assert value.item() == 0.0 and value.dtype == torch.float32 and value.ndim == 0


def test_zero_lambda_is_inactive() -> None:
    pen = build_penalty("l2", 0.0, params=_params())
    assert not pen.active
    assert pen().item() == 0.0
    assert build_penalty("l2", 0.1, params=_params()).active


def test_l1_value_and_grad() -> None:
    params = _params()
    pen = build_penalty("l1", 0.1, params=params)
    value = pen()
    # |1| + |-2| + |0| + |0.5| + |-0.5| + |3| + |0.25| = 7.25
    assert value.item() == pytest.approx(0.725)
    value.backward()
    for p in params:
        torch.testing.assert_close(p.grad, 0.1 * torch.sign(p.detach()))


def test_l2_value_and_grad() -> None:
    params = _params()
    pen = build_penalty("l2", 0.1, params=params)
    value = pen()
    # 1 + 4 + 0 + 0.25 + 0.25 + 9 + 0.0625 = 14.5625
    assert value.item() == pytest.approx(1.45625)
    value.backward()
    for p in params:
        torch.testing.assert_close(p.grad, 2 * 0.1 * p.detach())


def test_l2_sp_value_and_grad() -> None:
    params = _params()
    reference = [p.detach().clone() for p in params]
    pen = build_penalty("l2_sp", 0.5, params=params, reference=reference)
    assert pen.active
    assert pen().item() == 0.0  # zero right after construction

    with torch.no_grad():
        params[0].add_(torch.tensor([1.0, 0.0, -2.0]))
        params[1].add_(0.5)
    value = pen()
    # (1 + 0 + 4) + 4 * 0.25 = 6
    assert value.item() == pytest.approx(3.0)
    value.backward()
    for p, p0 in zip(params, reference, strict=True):
        torch.testing.assert_close(p.grad, 2 * 0.5 * (p.detach() - p0))


def test_l2_sp_zero_gradient_at_reference() -> None:
    params = _params()
    pen = build_penalty("l2_sp", 1.0, params=params, reference=[p.detach() for p in params])
    pen().backward()
    for p in params:
        assert p.grad is not None and torch.equal(p.grad, torch.zeros_like(p))


def test_l2_sp_stores_detached_copies() -> None:
    params = _params()
    reference = [p.detach().clone() for p in params]
    pen = build_penalty("l2_sp", 1.0, params=params, reference=reference)
    for r in reference:
        r.add_(10.0)  # mutating the caller's tensors must not move the anchor
    assert pen().item() == 0.0


@pytest.mark.parametrize("name", ["l1", "l2", "l2_sp"])
def test_frozen_params_excluded(name: str) -> None:
    params = _params()
    params[1].requires_grad_(False)
    reference = [torch.zeros_like(p) for p in params]
    pen = build_penalty(name, 1.0, params=params, reference=reference)
    only_first = build_penalty(name, 1.0, params=params[:1], reference=reference[:1])
    assert pen().item() == pytest.approx(only_first().item())
    assert pen().item() == pytest.approx(5.0 if name != "l1" else 3.0)


def test_all_frozen_is_inactive_zero() -> None:
    params = [nn.Parameter(torch.ones(3), requires_grad=False)]
    pen = build_penalty("l2", 1.0, params=params)
    assert not pen.active and pen().item() == 0.0


def test_bf16_params_computed_in_float32() -> None:
    p = nn.Parameter(torch.full((1000,), 1.01, dtype=torch.bfloat16))
    value = build_penalty("l2", 1.0, params=[p])()
    assert value.dtype == torch.float32
    expected = 1000 * float(p.detach()[0]) ** 2
    assert value.item() == pytest.approx(expected, rel=1e-6)
    value.backward()
    assert p.grad is not None and torch.isfinite(p.grad).all()

    ref = [p.detach().clone()]
    sp = build_penalty("l2_sp", 1.0, params=[p], reference=ref)
    assert sp().dtype == torch.float32 and sp().item() == 0.0


def test_many_tensors_matches_plain_sum() -> None:
    torch.manual_seed(0)
    params = [nn.Parameter(torch.randn(int(s))) for s in torch.randint(1, 50, (200,))]
    reference = [torch.randn_like(p) for p in params]
    l2 = build_penalty("l2", 0.01, params=params)()
    sp = build_penalty("l2_sp", 0.01, params=params, reference=reference)()
    l1 = build_penalty("l1", 0.01, params=params)()
    with torch.no_grad():
        torch.testing.assert_close(l2, 0.01 * sum(p.square().sum() for p in params))
        torch.testing.assert_close(
            sp, 0.01 * sum((p - r).square().sum() for p, r in zip(params, reference, strict=True))
        )
        torch.testing.assert_close(l1, 0.01 * sum(p.abs().sum() for p in params))


def test_l2_sp_analytic_grad_float64_params() -> None:
    a = torch.randn(4, dtype=torch.float64, requires_grad=True)
    b = torch.randn(2, 3, dtype=torch.float64, requires_grad=True)
    ref = [torch.randn(4, dtype=torch.float64), torch.randn(2, 3, dtype=torch.float64)]

    def l2_sp(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        # float32 compute, so compare analytic grads rather than gradcheck's tight tolerances
        return build_penalty("l2_sp", 0.3, params=[x, y], reference=ref)()

    value = l2_sp(a, b)
    value.backward()
    torch.testing.assert_close(a.grad, (0.6 * (a - ref[0])).detach(), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(b.grad, (0.6 * (b - ref[1])).detach(), rtol=1e-5, atol=1e-5)


def test_unknown_name_lists_known() -> None:
    with pytest.raises(ValueError, match="none, l1, l2, l2_sp") as info:
        build_penalty("l3", 1.0, params=_params())
    assert "'l3'" in str(info.value)


@pytest.mark.parametrize("lam", [-0.1, math.nan, math.inf])
def test_bad_lambda_raises(lam: float) -> None:
    with pytest.raises(ValueError, match="lam"):
        build_penalty("l2", lam, params=_params())


def test_l2_sp_requires_reference() -> None:
    with pytest.raises(ValueError, match="reference"):
        build_penalty("l2_sp", 1.0, params=_params())


def test_l2_sp_reference_shape_and_length_checked() -> None:
    params = _params()
    with pytest.raises(ValueError, match=r"reference\[1\]"):
        build_penalty("l2_sp", 1.0, params=params, reference=[torch.zeros(3), torch.zeros(4)])
    with pytest.raises(ValueError, match="1 tensors"):
        build_penalty("l2_sp", 1.0, params=params, reference=[torch.zeros(3)])


@pytest.mark.parametrize("name", ["l1", "l2", "l2_sp"])
def test_float64_params_give_float32(name: str) -> None:
    p = nn.Parameter(torch.tensor([1.0, -2.0], dtype=torch.float64))
    ref = [torch.zeros(2, dtype=torch.float64)]
    value = build_penalty(name, 1.0, params=[p], reference=ref)()
    assert value.dtype == torch.float32
    assert value.item() == pytest.approx(3.0 if name == "l1" else 5.0)
    value.backward()
    assert p.grad is not None and p.grad.dtype == torch.float64
