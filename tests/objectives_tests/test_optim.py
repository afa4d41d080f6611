from __future__ import annotations

import math
from typing import Any

import pytest
import torch
from torch import nn

from objectives.optim import OPTIMIZERS, build_optimizer, lr_factor, set_lr


def _params() -> list[nn.Parameter]:
    return [nn.Parameter(torch.randn(3, 2)), nn.Parameter(torch.randn(2))]


def test_names() -> None:
    assert OPTIMIZERS == ("sgd", "momentum", "adam", "adamw", "rmsprop")


@pytest.mark.parametrize(
    ("name", "cls"),
    [
        ("sgd", torch.optim.SGD),
        ("momentum", torch.optim.SGD),
        ("adam", torch.optim.Adam),
        ("adamw", torch.optim.AdamW),
        ("rmsprop", torch.optim.RMSprop),
    ],
)
def test_builds_right_class(name: str, cls: type[torch.optim.Optimizer]) -> None:
    opt = build_optimizer(name, _params(), lr=0.01, weight_decay=1e-4)
    assert type(opt) is cls
    (group,) = opt.param_groups
    assert group["lr"] == 0.01 and group["base_lr"] == 0.01
    assert group["weight_decay"] == 1e-4


def test_sgd_has_no_momentum() -> None:
    (group,) = build_optimizer("sgd", _params(), lr=0.1, momentum=0.9).param_groups
    assert group["momentum"] == 0.0 and group["nesterov"] is False


@pytest.mark.parametrize("nesterov", [False, True])
def test_momentum_hyperparameters(nesterov: bool) -> None:
    opt = build_optimizer("momentum", _params(), lr=0.1, momentum=0.8, nesterov=nesterov)
    (group,) = opt.param_groups
    assert group["momentum"] == 0.8 and group["nesterov"] is nesterov


def test_rmsprop_momentum() -> None:
    (group,) = build_optimizer("rmsprop", _params(), lr=0.1, momentum=0.5).param_groups
    assert group["momentum"] == 0.5


def test_adamw_weight_decay_is_explicit() -> None:
    # torch's AdamW default is 0.01; ours must be what was passed (0.0 by default).
    (group,) = build_optimizer("adamw", _params(), lr=1e-3).param_groups
    assert group["weight_decay"] == 0.0


def test_param_groups_keep_their_lr() -> None:
    p1, p2 = _params()
    groups: list[dict[str, Any]] = [{"params": [p1], "lr": 1e-4}, {"params": [p2]}]
    opt = build_optimizer("adamw", groups, lr=1e-3)
    assert [g["base_lr"] for g in opt.param_groups] == [1e-4, 1e-3]
    assert [g["lr"] for g in opt.param_groups] == [1e-4, 1e-3]


def test_optimizer_steps() -> None:
    p = nn.Parameter(torch.tensor([1.0]))
    for name in OPTIMIZERS:
        with torch.no_grad():
            p.fill_(1.0)
        opt = build_optimizer(name, [p], lr=0.1)
        p.square().sum().backward()
        opt.step()
        opt.zero_grad()
        assert p.item() < 1.0, name


@pytest.mark.parametrize("name", OPTIMIZERS)
def test_fused_asks_for_a_one_launch_kernel(name: str) -> None:
    # RMSprop has no fused kernel in torch 2.14 (no `fused` argument): the multi-tensor
    # foreach one instead. The others' fused kernels also run on the CPU, so all can step here.
    kernel = "foreach" if name == "rmsprop" else "fused"
    p = nn.Parameter(torch.tensor([1.0, 2.0]))
    assert build_optimizer(name, [p], lr=0.1).defaults[kernel] is None  # torch picks
    opt = build_optimizer(name, [p], lr=0.1, fused=True)
    assert opt.defaults[kernel] is True
    p.square().sum().backward()
    opt.step()
    assert (p.detach() < torch.tensor([1.0, 2.0])).all()


def test_unknown_optimizer_lists_known() -> None:
    with pytest.raises(ValueError, match="sgd, momentum, adam, adamw, rmsprop") as info:
        build_optimizer("lbfgs", _params(), lr=0.1)
    assert "'lbfgs'" in str(info.value)


@pytest.mark.parametrize(
    ("kwargs", "bad"),
    [
        ({"lr": 0.0}, "lr"),
        ({"lr": -1.0}, "lr"),
        ({"lr": math.nan}, "lr"),
        ({"lr": math.inf}, "lr"),
        ({"lr": 0.1, "momentum": 1.0}, "momentum"),
        ({"lr": 0.1, "momentum": -0.1}, "momentum"),
        ({"lr": 0.1, "weight_decay": -1e-4}, "weight_decay"),
        ({"lr": 0.1, "weight_decay": math.nan}, "weight_decay"),
    ],
)
def test_bad_values_raise(kwargs: dict[str, Any], bad: str) -> None:
    with pytest.raises(ValueError, match=bad):
        build_optimizer("momentum", _params(), **kwargs)


def test_bad_group_lr_raises() -> None:
    p1, p2 = _params()
    with pytest.raises(ValueError, match="group 1 lr"):
        groups: list[dict[str, Any]] = [{"params": [p1]}, {"params": [p2], "lr": -1.0}]
        build_optimizer("sgd", groups, lr=0.1)


def test_nesterov_without_momentum_raises() -> None:
    with pytest.raises(ValueError, match="nesterov"):
        build_optimizer("momentum", _params(), lr=0.1, momentum=0.0, nesterov=True)


# ---- schedule ----


def test_warmup_increases_to_peak() -> None:
    factors = [lr_factor(s, total_steps=100, warmup_steps=10) for s in range(10)]
    assert factors[0] == pytest.approx(0.1)
    assert all(a < b for a, b in zip(factors, factors[1:], strict=False))
    assert factors[-1] == 1.0
    assert lr_factor(10, total_steps=100, warmup_steps=10) == 1.0  # cosine starts at the peak


@pytest.mark.parametrize("final", [0.0, 0.1])
@pytest.mark.parametrize("warmup", [0, 7])
def test_cosine_decay_reaches_final(final: float, warmup: int) -> None:
    total = 50
    factors = [
        lr_factor(s, total_steps=total, warmup_steps=warmup, final_factor=final)
        for s in range(total + 20)
    ]
    decay = factors[warmup : total + 1]
    assert all(a > b for a, b in zip(decay, decay[1:], strict=False))
    assert factors[total] == pytest.approx(final, abs=1e-12)
    assert factors[total - 1] > final  # the last training step is not wasted at the floor
    assert all(f == final for f in factors[total:])  # clamped after
    assert all(final <= f <= 1.0 for f in factors)
    mid = warmup + (total - warmup) / 2
    if mid == int(mid):  # half-way through the decay, the cosine is at the mean
        assert factors[int(mid)] == pytest.approx((1 + final) / 2)


def test_no_warmup_starts_at_one() -> None:
    assert lr_factor(0, total_steps=10) == 1.0


def test_schedule_is_pure() -> None:
    kw: dict[str, Any] = {"total_steps": 30, "warmup_steps": 5, "final_factor": 0.05}
    first = [lr_factor(s, **kw) for s in range(40)]
    assert first == [lr_factor(s, **kw) for s in reversed(range(40))][::-1]


@pytest.mark.parametrize(
    ("step", "kwargs", "bad"),
    [
        (-1, {"total_steps": 10}, "step"),
        (0, {"total_steps": 0}, "total_steps"),
        (0, {"total_steps": 10, "warmup_steps": -1}, "warmup_steps"),
        (0, {"total_steps": 10, "warmup_steps": 11}, "warmup_steps"),
        (0, {"total_steps": 10, "final_factor": 1.5}, "final_factor"),
        (0, {"total_steps": 10, "final_factor": math.nan}, "final_factor"),
    ],
)
def test_schedule_bad_arguments(step: int, kwargs: dict[str, Any], bad: str) -> None:
    with pytest.raises(ValueError, match=bad):
        lr_factor(step, **kwargs)


def test_schedule_rejects_float_step() -> None:
    with pytest.raises(TypeError):
        lr_factor(1.5, total_steps=10)  # type: ignore[arg-type]


def test_set_lr_scales_every_group() -> None:
    p1, p2 = _params()
    groups: list[dict[str, Any]] = [{"params": [p1], "lr": 0.2}, {"params": [p2]}]
    opt = build_optimizer("sgd", groups, lr=0.1)
    assert set_lr(opt, 0.5) == pytest.approx(0.1)
    assert [g["lr"] for g in opt.param_groups] == pytest.approx([0.1, 0.05])
    assert [g["base_lr"] for g in opt.param_groups] == [0.2, 0.1]
    assert set_lr(opt, 1.0) == pytest.approx(0.2)  # from base_lr, not compounding


def test_set_lr_bad_inputs() -> None:
    opt = build_optimizer("sgd", _params(), lr=0.1)
    with pytest.raises(ValueError, match="factor"):
        set_lr(opt, -0.5)
    plain = torch.optim.SGD(_params(), lr=0.1)
    with pytest.raises(ValueError, match="base_lr"):
        set_lr(plain, 0.5)
