from __future__ import annotations

import dataclasses
import math
import time

import pytest
import torch

from objectives.config import TrialConfig
from objectives.data import Task
from objectives.losses import LOSS_NAMES
from objectives.models import StagedNet
from objectives.optim import OPTIMIZERS
from objectives.penalties import PENALTIES
from objectives.train import DivergedError, FineTuneResult, fine_tune
from tests.support import (
    NUM_CLASSES,
    dynamo_config,
    quadrants_model,
    quadrants_task,
    train_config,
)

BASE_KEYS = {
    "train_loss", "val_accuracy", "val_cross_entropy", "val_macro_f1", "val_ece", "lr",
    "epoch_seconds", "images_per_second",
}


@pytest.fixture(scope="module")
def task() -> Task:
    return quadrants_task()


def _run(config: TrialConfig, task: Task) -> tuple[FineTuneResult, list[tuple[int, dict]]]:
    calls: list[tuple[int, dict]] = []
    result = fine_tune(config, task, on_epoch=lambda e, m: calls.append((e, dict(m))))
    return result, calls


def _check_metrics(metrics: dict[str, float], config: TrialConfig, n_train: int) -> None:
    assert all(isinstance(v, float) and math.isfinite(v) for v in metrics.values()), metrics
    assert metrics["train_loss"] >= 0
    assert 0 <= metrics["val_accuracy"] <= 1
    assert 0 <= metrics["val_macro_f1"] <= 1
    assert metrics["val_cross_entropy"] >= 0
    assert 0 < metrics["lr"] <= config.lr * (1 + 1e-9)
    assert metrics["epoch_seconds"] > 0
    assert metrics["images_per_second"] > 0


def test_callback_once_per_epoch_with_the_metrics(task: Task) -> None:
    config = train_config(epochs=3)
    result, calls = _run(config, task)
    assert [e for e, _ in calls] == [1, 2, 3]
    for (_, metrics), entry in zip(calls, result.history, strict=True):
        assert set(metrics) == BASE_KEYS
        assert metrics == entry
        _check_metrics(metrics, config, len(task.data.train))
    assert result.final == result.history[-1]
    assert result.val_logits is not None and result.val_targets is not None
    assert result.val_logits.shape == (len(task.data.val), NUM_CLASSES)
    assert result.val_logits.dtype == torch.float32
    assert torch.equal(result.val_targets, task.data.val.y)


def test_learns_the_pattern(task: Task) -> None:
    result, calls = _run(train_config(epochs=3), task)
    accuracy = calls[-1][1]["val_accuracy"]
    assert accuracy > 0.8  # chance is 0.25
    assert calls[-1][1]["train_loss"] < calls[0][1]["train_loss"]
    # The returned model is the trained one: its predictions give that accuracy.
    result.model.eval()
    with torch.no_grad():
        logits = result.model(task.data.normalize(task.data.val.x))
    assert float((logits.argmax(1) == task.data.val.y).float().mean()) == pytest.approx(accuracy)


def test_lr_follows_the_schedule_to_near_zero(task: Task) -> None:
    _, calls = _run(train_config(epochs=4, warmup_epochs=1, lr=0.02), task)
    lrs = [m["lr"] for _, m in calls]
    assert lrs[0] == pytest.approx(0.02)  # last step of the warmup epoch is the peak
    assert lrs == sorted(lrs, reverse=True)
    assert lrs[-1] < 0.02 * 0.05


def test_callback_exception_propagates_and_stops_training(task: Task) -> None:
    epochs: list[int] = []

    class Stop(Exception):
        pass

    def on_epoch(epoch: int, metrics: dict[str, float]) -> None:
        epochs.append(epoch)
        if epoch == 2:
            raise Stop("pruned")

    with pytest.raises(Stop, match="pruned"):
        fine_tune(train_config(epochs=5), task, on_epoch=on_epoch)
    assert epochs == [1, 2]


def test_huge_learning_rate_raises_diverged_error(task: Task) -> None:
    calls: list[int] = []
    config = train_config(optimizer="sgd", lr=1e20, warmup_epochs=0, epochs=3)
    with pytest.raises(DivergedError, match="epoch 1") as info:
        fine_tune(config, task, on_epoch=lambda e, m: calls.append(e))
    assert info.value.epoch == 1
    assert not math.isfinite(info.value.value)
    assert isinstance(info.value, RuntimeError)
    assert calls == []


def test_diverged_error_names_the_epoch_it_happened_in(task: Task) -> None:
    models: list[StagedNet] = []

    def make_model(seed: int) -> StagedNet:
        models.append(quadrants_model(seed))
        return models[-1]

    def poison(epoch: int, metrics: dict[str, float]) -> None:
        # Epoch 1 trains normally; then a non-finite weight makes epoch 2's loss NaN.
        with torch.no_grad():
            models[0].head.weight.fill_(float("nan"))

    nan_task = Task("poisoned", task.data, make_model)
    with pytest.raises(DivergedError, match="epoch 2") as info:
        fine_tune(train_config(epochs=4), nan_task, on_epoch=poison)
    assert info.value.epoch == 2 and math.isnan(info.value.value)


def _stage_state(model: StagedNet, depth: int) -> dict[str, torch.Tensor]:
    prefixes = tuple(f"stages.{i}." for i in range(depth))
    return {k: v.clone() for k, v in model.state_dict().items() if k.startswith(prefixes)}


@pytest.mark.parametrize("depth", [1, 2, 3])
def test_frozen_stages_are_unchanged(task: Task, depth: int) -> None:
    config = train_config(freeze_depth=depth, epochs=2, penalty="l2", penalty_lambda=1e-3,
                     weight_decay=1e-2)
    pretrained = quadrants_model(config.seed)
    trained = fine_tune(config, task).model
    before = _stage_state(pretrained, 3)
    after = _stage_state(trained, 3)
    for key, value in before.items():
        stage = int(key.split(".")[1])
        if stage < depth:  # weights and BatchNorm statistics alike
            assert torch.equal(after[key], value), key
    changed = {int(k.split(".")[1]) for k, v in before.items() if not torch.equal(after[k], v)}
    assert changed == set(range(depth, 3))
    assert not torch.equal(trained.head.weight, pretrained.head.weight)


def test_nothing_frozen_at_depth_zero(task: Task) -> None:
    pretrained = quadrants_model(0)
    trained = fine_tune(train_config(freeze_depth=0), task).model
    for name, p in pretrained.named_parameters():
        assert not torch.equal(p, dict(trained.named_parameters())[name]), name


def _without_timing(history: list[dict[str, float]]) -> list[dict[str, float]]:
    drop = {"epoch_seconds", "images_per_second"}
    return [{k: v for k, v in h.items() if k not in drop} for h in history]


def test_same_config_and_seed_give_identical_history() -> None:
    task = quadrants_task(crop_padding=1, flip=True)  # both augmentations draw random numbers
    config = train_config(epochs=2, penalty="l2_sp", penalty_lambda=1e-3)
    a = fine_tune(config, task)
    torch.manual_seed(999)  # the global RNG plays no part
    b = fine_tune(config, task)
    assert _without_timing(a.history) == _without_timing(b.history)
    assert a.val_logits is not None and b.val_logits is not None
    assert torch.equal(a.val_logits, b.val_logits)
    for (name, p), q in zip(a.model.state_dict().items(), b.model.state_dict().values(),
                            strict=True):
        assert torch.equal(p, q), name
    c = fine_tune(config.replace(seed=1), task)
    assert _without_timing(c.history) != _without_timing(a.history)


def test_seed_also_drives_the_data_order_and_augmentation(task: Task) -> None:
    # The same model for every seed: any difference comes from the shuffling and the crops.
    same_model = Task("same-model", task.data, lambda seed: quadrants_model(0))
    a = fine_tune(train_config(seed=0), same_model)
    b = fine_tune(train_config(seed=1), same_model)
    assert a.history[0]["train_loss"] != b.history[0]["train_loss"]
    assert not torch.equal(a.model.head.weight, b.model.head.weight)


@pytest.mark.parametrize("loss", LOSS_NAMES)
def test_every_loss_runs(task: Task, loss: str) -> None:
    config = train_config(loss=loss)
    _, calls = _run(config, task)
    assert [e for e, _ in calls] == [1]
    assert set(calls[0][1]) == BASE_KEYS
    _check_metrics(calls[0][1], config, len(task.data.train))


@pytest.mark.parametrize("penalty", PENALTIES)
def test_every_penalty_runs(task: Task, penalty: str) -> None:
    lam = 0.0 if penalty == "none" else 1e-3
    config = train_config(penalty=penalty, penalty_lambda=lam)
    _, calls = _run(config, task)
    metrics = calls[0][1]
    if penalty == "none":
        assert set(metrics) == BASE_KEYS
    else:
        assert set(metrics) == BASE_KEYS | {"train_penalty"}
        assert math.isfinite(metrics["train_penalty"]) and metrics["train_penalty"] > 0
    _check_metrics(metrics, config, len(task.data.train))


@pytest.mark.parametrize(
    ("penalty", "lam", "depth"),
    [("l2", 0.0, 0), ("l1", 0.0, 1), ("l2_sp", 1e-3, 3)],  # zero lambda; l2_sp of a probe
)
def test_inactive_penalty_reports_no_train_penalty(
    task: Task, penalty: str, lam: float, depth: int
) -> None:
    _, calls = _run(train_config(penalty=penalty, penalty_lambda=lam, freeze_depth=depth), task)
    assert set(calls[0][1]) == BASE_KEYS


def test_l2_sp_penalty_is_the_distance_to_pretrained(task: Task) -> None:
    # Anchored at the pretrained weights: after training the distance is small but positive.
    _, calls = _run(train_config(penalty="l2_sp", penalty_lambda=1.0, epochs=2), task)
    values = [m["train_penalty"] for _, m in calls]
    assert 0 < values[0]
    l2 = _run(train_config(penalty="l2", penalty_lambda=1.0), task)[1][0][1]["train_penalty"]
    assert values[0] < l2  # distance to pretrained, not to zero


@pytest.mark.parametrize("optimizer", OPTIMIZERS)
def test_every_optimizer_runs(task: Task, optimizer: str) -> None:
    lr = 1e-3 if optimizer in ("adam", "adamw", "rmsprop") else 0.05
    config = train_config(optimizer=optimizer, lr=lr, nesterov=optimizer == "momentum")
    result, calls = _run(config, task)
    _check_metrics(calls[0][1], config, len(task.data.train))
    # Training moved the weights.
    assert not torch.equal(result.model.head.weight, quadrants_model(0).head.weight)


def test_batch_larger_than_the_data_is_clipped(task: Task) -> None:
    config = train_config(batch_size=10_000, epochs=2)
    _, calls = _run(config, task)
    assert [e for e, _ in calls] == [1, 2]
    _check_metrics(calls[-1][1], config, len(task.data.train))


def test_config_is_not_modified(task: Task) -> None:
    config = train_config(epochs=1)
    snapshot = dataclasses.asdict(config)
    fine_tune(config, task)
    assert dataclasses.asdict(config) == snapshot


def test_images_per_second_counts_the_training_time_only(
    task: Task, monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Validation (here made to take 0.5 s more) is not training: it must not lower the
    throughput figure, and the epoch's time must include it."""
    import objectives.train as train

    predict = train.predict

    def slow_predict(*args: object, **kwargs: object) -> torch.Tensor:
        time.sleep(0.5)
        return predict(*args, **kwargs)

    monkeypatch.setattr(train, "predict", slow_predict)
    _, calls = _run(train_config(epochs=1), task)
    metrics = calls[0][1]
    train_seconds = len(task.data.train) / metrics["images_per_second"]
    assert train_seconds <= metrics["epoch_seconds"] - 0.5


class CountingBackend:
    """A torch.compile backend that runs Dynamo's graph as is and counts graphs and calls."""

    def __init__(self) -> None:
        self.graphs = 0
        self.calls = 0

    def __call__(self, graph: torch.fx.GraphModule, inputs: list[torch.Tensor]):  # noqa: ANN204
        self.graphs += 1

        def run(*args: torch.Tensor) -> object:
            self.calls += 1
            return graph.forward(*args)

        return run


@pytest.fixture
def counting(monkeypatch: pytest.MonkeyPatch) -> CountingBackend:
    import torch._dynamo

    backend = CountingBackend()
    monkeypatch.setattr("objectives.compiled.BACKEND", backend)
    torch._dynamo.reset()
    yield backend
    torch._dynamo.reset()


@pytest.mark.slow
def test_compiled_runs_stay_compiled_across_configurations(
    task: Task, counting: CountingBackend,
) -> None:
    """One worker runs trial after trial: each new batch size, freeze depth and mode is a
    graph, and Dynamo's recompile limit (here 2) must not make later trials run eagerly."""
    n_train, n_val = len(task.data.train), len(task.data.val)
    for batch_size, depth in ((32, 0), (48, 1), (16, 0), (32, 2)):
        calls = counting.calls
        with dynamo_config(recompile_limit=2):
            result = fine_tune(train_config(epochs=2, batch_size=batch_size,
                                            freeze_depth=depth), task, compile=True)
        assert result.compiled == "compiled"
        assert [h["compiled"] for h in result.history] == [1.0, 1.0]
        # Every forward ran through a compiled graph: the whole training batches (the short
        # last one is dropped: one shape, one graph) and one padded validation batch.
        steps = n_train // batch_size
        assert counting.calls - calls == 2 * (steps + math.ceil(n_val / 1024))
        assert result.history[-1]["images_per_second"] > 0
    assert counting.graphs >= 8  # two per configuration: train and eval


def test_a_run_that_cannot_stay_compiled_says_so(
    task: Task, counting: CountingBackend,
) -> None:
    # One graph allowed, two needed (train and eval): even after a reset it cannot fit.
    with dynamo_config(recompile_limit=1), pytest.warns(RuntimeWarning,
                                                         match="torch.compile fallback"):
        result = fine_tune(train_config(epochs=2, batch_size=48), task, compile=True)
    assert result.compiled is not None and result.compiled.startswith("fallback: ")
    assert result.history[-1]["compiled"] == 0.0
    assert math.isfinite(result.final["train_loss"])  # it trained on, eagerly


def test_fixed_shape_evaluation_pads_without_changing_the_logits(task: Task) -> None:
    from objectives.train import predict

    model = quadrants_model(0)
    loose = predict(model, task.data.val, task, batch_size=30)  # 30, 30, 20
    fixed = predict(model, task.data.val, task, batch_size=30, fixed_shape=True)
    assert fixed.shape == (len(task.data.val), NUM_CLASSES)
    torch.testing.assert_close(fixed, loose)


@pytest.mark.slow
def test_compiled_model_trains_like_the_eager_one(task: Task) -> None:
    # torch.compile's start-up (about a minute on 2 cores) is the cost of this test. Batches
    # of 48 divide the 240 training images: the compiled run drops no short batch.
    eager = fine_tune(train_config(epochs=1, batch_size=48), task)
    compiled = fine_tune(train_config(epochs=1, batch_size=48), task, compile=True)
    assert compiled.compiled == "compiled"
    assert compiled.final["train_loss"] == pytest.approx(eager.final["train_loss"], rel=1e-4)
    assert compiled.final["val_accuracy"] == pytest.approx(eager.final["val_accuracy"],
                                                           abs=0.02)
