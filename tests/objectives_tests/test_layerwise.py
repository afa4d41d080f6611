from __future__ import annotations

import pytest
import torch

from objectives.backbones import BACKBONES, NUM_STAGES, build_backbone
from objectives.config import TrialConfig
from objectives.data import Task
from objectives.models import StagedNet, freeze, layerwise_groups, small_cnn, trainable_parameters
from objectives.optim import build_optimizer, lr_factor, set_lr
from objectives.train import fine_tune
from tests.support import quadrants_task, train_config

LR = 0.1


def _group_lrs(model: StagedNet, optimizer: torch.optim.Optimizer) -> dict[str, float]:
    """The lr of each module ("head", "neck", "stage<i>") read off the optimizer's groups."""
    lr_of = {id(p): g["lr"] for g in optimizer.param_groups for p in g["params"]}
    modules = {"head": model.head, "neck": model.neck,
               **{f"stage{i}": s for i, s in enumerate(model.stages)}}
    out = {}
    for name, module in modules.items():
        if module is None:
            continue
        lrs = {lr_of.get(id(p)) for p in module.parameters()}
        assert len(lrs) <= 1, name  # a module never straddles two groups (a Dropout has none)
        if lrs and (lr := lrs.pop()) is not None:
            out[name] = lr
    return out


def _cnn(depth: int) -> StagedNet:
    model = small_cnn(4, width=4)
    freeze(model, depth)
    return model


@pytest.mark.parametrize(
    ("depth", "decay", "expected"),
    [
        (0, 0.5, {"head": LR, "stage2": LR / 2, "stage1": LR / 4, "stage0": LR / 8}),
        (1, 0.5, {"head": LR, "stage2": LR / 2, "stage1": LR / 4}),
        (2, 0.1, {"head": LR, "stage2": LR * 0.1}),
        (3, 0.5, {"head": LR}),  # linear probe
        (1, 1.0, {"head": LR, "stage2": LR, "stage1": LR}),
    ],
)
def test_group_learning_rates(depth: int, decay: float, expected: dict[str, float]) -> None:
    model = _cnn(depth)
    optimizer = build_optimizer("adamw", layerwise_groups(model, LR, decay), lr=LR)
    lrs = _group_lrs(model, optimizer)
    assert lrs.keys() == expected.keys()  # frozen stages are in no group
    for name, lr in expected.items():
        assert lrs[name] == pytest.approx(lr), name
    assert optimizer.param_groups[0]["lr"] == LR  # the head's group first: the peak lr
    # Along the schedule every group keeps its ratio: lr = base_lr * factor.
    for step in (0, 3, 10, 19):
        factor = lr_factor(step, total_steps=20, warmup_steps=5)
        assert set_lr(optimizer, factor) == pytest.approx(LR * factor)
        for group in optimizer.param_groups:
            assert group["lr"] == pytest.approx(group["base_lr"] * factor)
        for name, lr in _group_lrs(model, optimizer).items():
            assert lr == pytest.approx(expected[name] * factor), (step, name)


@pytest.mark.parametrize("depth", [0, 2, 3])
def test_decay_one_is_a_single_group_of_all_trainable_parameters(depth: int) -> None:
    model = _cnn(depth)
    [group] = layerwise_groups(model, LR, 1.0)
    assert group["lr"] == LR
    trainable = trainable_parameters(model)
    assert len(group["params"]) == len(trainable)
    assert all(p is q for p, q in zip(group["params"], trainable, strict=True))


@pytest.mark.parametrize("decay", [0.0, -0.5, 1.5, float("nan")])
def test_invalid_decay_is_refused(decay: float) -> None:
    with pytest.raises(ValueError, match="lr_decay"):
        layerwise_groups(_cnn(0), LR, decay)
    with pytest.raises(ValueError, match="lr_decay"):
        TrialConfig(lr_decay=decay)


@pytest.mark.parametrize("name", BACKBONES)
def test_every_backbone_family(name: str) -> None:
    model = build_backbone(name, 10, state=None, seed=0)
    freeze(model, 2)
    groups = layerwise_groups(model, LR, 0.5)
    grouped = [p for g in groups for p in g["params"]]
    trainable = trainable_parameters(model)
    assert len(grouped) == len({id(p) for p in grouped}) == len(trainable)
    assert {id(p) for p in grouped} == {id(p) for p in trainable}
    optimizer = build_optimizer("sgd", groups, lr=LR)
    lrs = _group_lrs(model, optimizer)
    deepest = NUM_STAGES - 1
    expected = {"head": LR, **{f"stage{i}": LR * 0.5 ** (deepest - i + 1)
                               for i in range(2, NUM_STAGES)}}
    if model.neck is not None and any(True for _ in model.neck.parameters()):
        expected["neck"] = expected[f"stage{deepest}"]  # with the deepest stage
    assert lrs == pytest.approx(expected)


@pytest.fixture(scope="module")
def task() -> Task:
    return quadrants_task()


def _stage0_change(task: Task, decay: float) -> float:
    config = train_config(optimizer="momentum", lr=0.05, lr_decay=decay, epochs=1)
    before = task.make_model(0).stages[0].state_dict()
    after = fine_tune(config, task).model.stages[0].state_dict()
    return sum(float((after[k].float() - v.float()).abs().sum())
               for k, v in before.items() if v.is_floating_point() and "running" not in k)


def test_fine_tune_uses_the_layerwise_rates(task: Task) -> None:
    plain, decayed = _stage0_change(task, 1.0), _stage0_change(task, 0.01)
    assert plain > 0 and decayed > 0
    assert decayed < 0.1 * plain  # the input stage trains at lr * 0.01^3
    result = fine_tune(train_config(lr_decay=0.5, epochs=2, warmup_epochs=1), task)
    assert result.history[0]["lr"] == pytest.approx(0.01)  # the head's, the peak after warmup
