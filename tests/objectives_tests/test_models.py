from __future__ import annotations

import re

import pytest
import torch
from torch import nn

from objectives.config import TrialConfig
from objectives.data import ImageData, Split, Task, channel_stats
from objectives.models import StagedNet, freeze, new_head, small_cnn, trainable_parameters
from objectives.optim import build_optimizer

NUM_STAGES = len(small_cnn(3, width=4).stages)


def _model() -> StagedNet:
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        return small_cnn(3, width=4)


def _batch_norms(module: nn.Module) -> list[nn.BatchNorm2d]:
    return [m for m in module.modules() if isinstance(m, nn.BatchNorm2d)]


def _bn_state(module: nn.Module) -> list[torch.Tensor]:
    return [
        t.clone()
        for bn in _batch_norms(module)
        for t in (bn.running_mean, bn.running_var, bn.num_batches_tracked)
    ]


def test_small_cnn_has_three_stages_and_a_head() -> None:
    model = _model()
    assert NUM_STAGES == 3
    assert isinstance(model.head, nn.Linear)
    assert model.head.out_features == 3
    assert model(torch.randn(2, 1, 8, 8)).shape == (2, 3)


@pytest.mark.parametrize("depth", range(NUM_STAGES + 1))
def test_freeze_turns_off_grad_exactly_on_first_stages(depth: int) -> None:
    model = _model()
    freeze(model, depth)
    for i, stage in enumerate(model.stages):
        flags = {p.requires_grad for p in stage.parameters()}
        assert flags == {i >= depth}, f"stage {i} at depth {depth}"
    assert all(p.requires_grad for p in model.head.parameters())


@pytest.mark.parametrize("depth", range(NUM_STAGES + 1))
def test_frozen_batch_norm_stays_in_eval_mode(depth: int) -> None:
    model = _model()
    freeze(model, depth)
    model.eval()
    model.train()
    assert model.training
    for i, stage in enumerate(model.stages):
        modes = {m.training for m in stage.modules()}
        assert modes == {i >= depth}, f"stage {i} at depth {depth}"
    assert model.head.training
    # eval() still puts everything in eval mode.
    model.eval()
    assert not any(m.training for m in model.modules())


@pytest.mark.parametrize("depth", range(NUM_STAGES + 1))
def test_frozen_running_stats_do_not_move_in_train_mode(depth: int) -> None:
    model = _model()
    freeze(model, depth)
    model.train()
    before = [_bn_state(stage) for stage in model.stages]
    model(torch.randn(16, 1, 8, 8) * 3 + 1)
    for i, stage in enumerate(model.stages):
        after = _bn_state(stage)
        unchanged = all(torch.equal(a, b) for a, b in zip(before[i], after, strict=True))
        assert unchanged == (i < depth), f"stage {i} at depth {depth}"


def test_freeze_before_train_call_is_kept_after_repeated_train_calls() -> None:
    model = _model()
    model.train()
    freeze(model, 2)  # freezing a model already in train mode puts frozen stages in eval
    assert not any(m.training for m in model.stages[0].modules())
    assert not any(m.training for m in model.stages[1].modules())
    for _ in range(3):
        model.train()
    assert not model.stages[1].training
    assert model.stages[2].training


def test_refreeze_to_smaller_depth_unfreezes() -> None:
    model = _model()
    freeze(model, 3)
    freeze(model, 1)
    model.train()
    assert [all(p.requires_grad for p in s.parameters()) for s in model.stages] == [
        False, True, True,
    ]
    assert [s.training for s in model.stages] == [False, True, True]


def test_full_depth_is_a_linear_probe() -> None:
    model = _model()
    freeze(model, NUM_STAGES)
    trainable = trainable_parameters(model)
    assert {id(p) for p in trainable} == {id(p) for p in model.head.parameters()}
    assert len(trainable) == 2  # weight and bias


@pytest.mark.parametrize("depth", [-1, NUM_STAGES + 1, 10])
def test_bad_depth_raises_naming_the_range(depth: int) -> None:
    model = _model()
    with pytest.raises(ValueError, match=re.escape(f"0..{NUM_STAGES}")) as info:
        freeze(model, depth)
    assert str(depth) in str(info.value)


@pytest.mark.parametrize("depth", range(NUM_STAGES + 1))
def test_trainable_parameters_excludes_frozen(depth: int) -> None:
    model = _model()
    freeze(model, depth)
    expected = [p for s in model.stages[depth:] for p in s.parameters()]
    expected += list(model.head.parameters())
    got = trainable_parameters(model)
    assert {id(p) for p in got} == {id(p) for p in expected}
    assert len(got) == len(expected)
    frozen = {id(p) for s in model.stages[:depth] for p in s.parameters()}
    assert not frozen & {id(p) for p in got}


@pytest.mark.parametrize("depth", range(NUM_STAGES + 1))
def test_optimizer_holds_only_trainable_parameters(depth: int) -> None:
    model = _model()
    freeze(model, depth)
    opt = build_optimizer("adamw", trainable_parameters(model), lr=1e-3)
    held = [p for group in opt.param_groups for p in group["params"]]
    assert len(held) == len(trainable_parameters(model))
    assert all(p.requires_grad for p in held)
    total = sum(p.numel() for p in held)
    expected = sum(p.numel() for s in model.stages[depth:] for p in s.parameters())
    assert total == expected + sum(p.numel() for p in model.head.parameters())


def _tiny_task() -> Task:
    g = torch.Generator().manual_seed(0)
    x = torch.randint(0, 256, (24, 1, 8, 8), generator=g, dtype=torch.uint8)
    y = torch.arange(24) % 3
    split = Split(x, y)
    mean, std = channel_stats(x)
    data = ImageData(split, split, split, ("a", "b", "c"), mean, std)
    return Task("tiny", data, lambda seed: _model())


@pytest.mark.parametrize("depth", [0, 2, NUM_STAGES])
def test_fine_tune_gives_the_optimizer_only_trainable_parameters(
    depth: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    import objectives.train as train

    seen: list[list[nn.Parameter]] = []
    real = train.build_optimizer

    def recording(name, params, **kwargs):  # type: ignore[no-untyped-def]
        params = list(params)
        seen.append(params)
        return real(name, params, **kwargs)

    monkeypatch.setattr(train, "build_optimizer", recording)
    config = TrialConfig(freeze_depth=depth, epochs=1, batch_size=8)
    model = train.fine_tune(config, _tiny_task()).model
    (params,) = seen
    assert {id(p) for p in params} == {id(p) for p in trainable_parameters(model)}
    frozen = {id(p) for s in model.stages[:depth] for p in s.parameters()}
    assert not frozen & {id(p) for p in params}


def test_new_head_is_deterministic_for_a_seed() -> None:
    a, b, c = _model(), _model(), _model()
    new_head(a, 7, seed=3)
    new_head(b, 7, seed=3)
    new_head(c, 7, seed=4)
    assert a.head.out_features == 7 and a.head.in_features == b.head.in_features
    assert torch.equal(a.head.weight, b.head.weight)
    assert torch.equal(a.head.bias, b.head.bias)
    assert not torch.equal(a.head.weight, c.head.weight)
    assert a(torch.randn(2, 1, 8, 8)).shape == (2, 7)


def test_new_head_leaves_global_rng_alone() -> None:
    model = _model()
    torch.manual_seed(123)
    expected = torch.rand(5)
    torch.manual_seed(123)
    new_head(model, 4, seed=9)
    assert torch.equal(torch.rand(5), expected)


def test_new_head_does_not_touch_the_stages() -> None:
    model = _model()
    before = {k: v.clone() for k, v in model.state_dict().items() if k.startswith("stages.")}
    new_head(model, 5, seed=1)
    after = model.state_dict()
    assert all(torch.equal(v, after[k]) for k, v in before.items())


def test_staged_net_needs_a_stage() -> None:
    with pytest.raises(ValueError, match="at least one stage"):
        StagedNet([], nn.Linear(2, 2))
