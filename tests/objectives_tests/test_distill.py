from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
from torch import nn

from objectives.checkpoint import load_checkpoint
from objectives.config import TrialConfig
from objectives.data import Task
from objectives.losses import ALL_LOSS_NAMES, LOSS_NAMES, build_loss
from objectives.serving import ImageClassifier
from objectives.train import _CHECKPOINT_KEYS, FineTuneResult, build_criterion, fine_tune, to_input
from tests.support import NUM_CLASSES, quadrants_task, train_config

LN2, LN3 = math.log(2.0), math.log(3.0)


@pytest.fixture(scope="module")
def task() -> Task:
    return quadrants_task(crop_padding=1, flip=True)  # both augmentations draw


# --- the loss -------------------------------------------------------------------------------


def test_registered_apart_from_the_label_losses() -> None:
    assert "distill" in ALL_LOSS_NAMES and "distill" not in LOSS_NAMES
    assert set(ALL_LOSS_NAMES) == {*LOSS_NAMES, "distill"}
    with pytest.raises(ValueError, match="distill"):
        build_loss("xyz")
    loss = build_loss("distill")  # defaults: alpha 0.5, T 4, cross-entropy base
    assert (loss.alpha, loss.temperature) == (0.5, 4.0)
    with pytest.raises(ValueError, match="unexpected parameter"):
        build_loss("distill", gamma=2.0)


def test_hand_computed_value() -> None:
    # T = 2. Sample 0: teacher logits (2 ln 3, 0) / 2 -> p = (3/4, 1/4); student (0, 0) -> q =
    # (1/2, 1/2); KL = 3/4 ln(3/2) + 1/4 ln(1/2) = 0.3040988 - 0.1732868 = 0.1308120.
    # Sample 1: teacher = student, KL = 0. Batch mean KL = 0.0654060, times T^2 = 0.2616240.
    # Cross-entropy of (0, 0) is ln 2 = 0.6931472 for either label.
    # alpha = 0.5: 0.5 * 0.2616240 + 0.5 * 0.6931472 = 0.4773856.
    student = torch.zeros(2, 2)
    teacher = torch.tensor([[2 * LN3, 0.0], [0.0, 0.0]])
    target = torch.tensor([0, 1])
    value = build_loss("distill", alpha=0.5, temperature=2.0)(student, target, teacher)
    assert value.item() == pytest.approx(0.4773856, abs=1e-6)
    kl = 0.75 * math.log(1.5) - 0.25 * LN2
    assert value.item() == pytest.approx(0.5 * 4 * kl / 2 + 0.5 * LN2, rel=1e-6)
    alone = build_loss("distill", alpha=1.0, temperature=2.0)(student, target, teacher)
    assert alone.item() == pytest.approx(4 * kl / 2, rel=1e-6)  # T^2 * batch-mean KL


@pytest.mark.parametrize("base", LOSS_NAMES)
def test_alpha_zero_is_the_base_loss(base: str) -> None:
    torch.manual_seed(0)
    logits, teacher = torch.randn(6, 5), torch.randn(6, 5) * 3
    target = torch.randint(0, 5, (6,))
    config = TrialConfig(loss="distill", distill_alpha=0.0, distill_base=base, focal_gamma=1.5,
                         label_smoothing=0.2, huber_delta=0.3, kl_smoothing=0.05)
    expected = build_loss(base, **config.loss_params(base))(logits, target)
    assert torch.equal(build_criterion(config)(logits, target, teacher), expected)


def test_build_criterion_gives_the_base_its_own_parameter() -> None:
    config = TrialConfig(loss="distill", distill_alpha=0.3, distill_temperature=2.5,
                         distill_base="focal", focal_gamma=1.5)
    assert config.loss_params() == {"alpha": 0.3, "temperature": 2.5}
    criterion = build_criterion(config)
    assert (criterion.alpha, criterion.temperature, criterion.base.gamma) == (0.3, 2.5, 1.5)
    assert build_criterion(TrialConfig(loss="huber", huber_delta=0.2)).delta == 0.2


@pytest.mark.parametrize("temperature", [1.0, 4.0, 10.0])
def test_t_squared_scaling_of_the_gradient(temperature: float) -> None:
    # d/ds of T^2 * mean KL = T * (softmax(s / T) - softmax(t / T)) / N: the T^2 factor keeps
    # the soft term's gradient from shrinking as 1 / T^2.
    torch.manual_seed(1)
    student = torch.randn(4, 3, requires_grad=True)
    teacher = torch.randn(4, 3) * 2
    loss = build_loss("distill", alpha=1.0, temperature=temperature)
    loss(student, torch.zeros(4, dtype=torch.long), teacher).backward()
    t = temperature
    expected = t * ((student.detach() / t).softmax(1) - (teacher / t).softmax(1)) / 4
    assert student.grad is not None
    torch.testing.assert_close(student.grad, expected)


def test_gradient_reaches_the_student_only() -> None:
    student = torch.randn(4, 3, requires_grad=True)
    teacher = torch.randn(4, 3, requires_grad=True)
    build_loss("distill")(student, torch.tensor([0, 1, 2, 0]), teacher).backward()
    assert student.grad is not None and student.grad.abs().sum() > 0
    assert teacher.grad is None


def test_bf16_inference_teacher_logits_work_in_backward() -> None:
    with torch.inference_mode():
        teacher = (torch.randn(4, 3) * 2).bfloat16()
    student = torch.randn(4, 3, dtype=torch.bfloat16, requires_grad=True)
    value = build_loss("distill", alpha=0.7)(student, torch.tensor([0, 1, 2, 0]), teacher)
    assert value.dtype == torch.float32 and torch.isfinite(value)
    value.backward()
    assert student.grad is not None and torch.isfinite(student.grad).all()


def test_teacher_of_another_shape_is_refused() -> None:
    with pytest.raises(ValueError, match="teacher logits have shape"):
        build_loss("distill")(torch.randn(4, 3), torch.zeros(4, dtype=torch.long),
                              torch.randn(4, 5))


@pytest.mark.parametrize(
    ("changes", "field"),
    [({"distill_alpha": -0.1}, "distill_alpha"), ({"distill_alpha": 1.5}, "distill_alpha"),
     ({"distill_alpha": math.nan}, "distill_alpha"),
     ({"distill_temperature": 0.0}, "distill_temperature"),
     ({"distill_temperature": math.inf}, "distill_temperature"),
     ({"distill_base": "distill"}, "distill_base"), ({"distill_base": "xyz"}, "distill_base")],
)
def test_config_refuses_bad_distill_settings(changes: dict[str, object], field: str) -> None:
    with pytest.raises(ValueError, match=field):
        TrialConfig(loss="distill", **changes)  # type: ignore[arg-type]


# --- fine_tune with a teacher ---------------------------------------------------------------


class RecordingTeacher(nn.Module):
    """Logits from a fixed linear map of the images; records what it saw and how."""

    def __init__(self, num_classes: int = NUM_CLASSES) -> None:
        super().__init__()
        self.linear = nn.Linear(64, num_classes)
        self.seen: list[torch.Tensor] = []
        self.modes: list[tuple[bool, bool]] = []  # (training, inference mode) per call

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        self.seen.append(images.clone())
        self.modes.append((self.training, torch.is_inference_mode_enabled()))
        return self.linear(images.float().flatten(1) / 255.0)


def _distill(**changes: object) -> TrialConfig:
    return train_config(loss="distill", **changes)


def test_teacher_sees_the_students_augmented_uint8_batches(task: Task) -> None:
    teacher = RecordingTeacher().train()  # fine_tune must put it in eval mode
    before = {k: v.clone() for k, v in teacher.state_dict().items()}
    student_inputs: list[torch.Tensor] = []
    model = task.make_model(0)
    model.register_forward_pre_hook(
        lambda m, args: student_inputs.append(args[0].clone()) if m.training else None)
    spy = Task(task.name, task.data, lambda seed: model)
    config = _distill(epochs=2)
    result = fine_tune(config, spy, teacher=teacher)
    assert len(result.history) == 2 and math.isfinite(result.final["train_loss"])
    batches = teacher.seen[1:]  # the first call is the one-image shape check
    assert len(teacher.seen[0]) == 1
    assert len(batches) == len(student_inputs) == 2 * math.ceil(240 / config.batch_size)
    for images, x in zip(batches, student_inputs, strict=True):
        assert images.dtype == torch.uint8
        torch.testing.assert_close(to_input(images, task.data), x)  # the very same draws
    stored = {bytes(img.numpy()) for img in task.data.train.x}
    assert any(bytes(img.numpy()) not in stored for b in batches for img in b)  # augmented
    assert all(mode == (False, True) for mode in teacher.modes)  # eval, inference mode
    assert not teacher.training
    assert all(p.grad is None for p in teacher.parameters())
    for k, v in teacher.state_dict().items():
        assert torch.equal(v, before[k]), k


def test_a_good_teacher_teaches_without_labels() -> None:
    task = quadrants_task()  # no flips: a mirrored quadrant is another class
    trained = fine_tune(train_config(epochs=3), task)
    assert trained.final["val_accuracy"] > 0.8
    teacher = ImageClassifier(trained.model, task.data)
    student = fine_tune(_distill(epochs=3, distill_alpha=1.0, distill_temperature=2.0), task,
                        teacher=teacher)
    assert student.final["val_accuracy"] > 0.8  # alpha = 1: the labels play no part


def test_distill_without_a_teacher_is_refused(task: Task) -> None:
    with pytest.raises(ValueError, match="the distill loss needs a teacher model"):
        fine_tune(_distill(), task)


def test_teacher_with_another_class_count_is_refused(task: Task) -> None:
    with pytest.raises(ValueError, match=f"teacher has 3 classes but the task has {NUM_CLASSES}"):
        fine_tune(_distill(), task, teacher=RecordingTeacher(num_classes=3))


def test_teacher_is_ignored_without_distill(task: Task) -> None:
    class Untouchable(nn.Module):
        def forward(self, images: torch.Tensor) -> torch.Tensor:
            raise AssertionError("called")

        def _apply(self, fn, recurse=True):  # type: ignore[no-untyped-def]
            raise AssertionError("moved")

    result = fine_tune(train_config(), task, teacher=Untouchable())
    plain = fine_tune(train_config(), task)
    assert result.final["train_loss"] == plain.final["train_loss"]


def _without_timing(result: FineTuneResult) -> list[dict[str, float]]:
    return [{k: v for k, v in h.items() if k not in {"epoch_seconds", "images_per_second"}}
            for h in result.history]


def test_checkpoint_resume_with_a_teacher(task: Task, tmp_path: Path) -> None:
    teacher = RecordingTeacher()
    config = _distill(epochs=2)
    path = tmp_path / "trial.pt"
    full = fine_tune(config, task, teacher=teacher)

    class Killed(Exception):
        pass

    def kill(epoch: int, metrics: dict[str, float]) -> None:
        if epoch == 2:  # the checkpoint, written after each report, holds epoch 1
            raise Killed

    with pytest.raises(Killed):
        fine_tune(config, task, teacher=teacher, checkpoint=path, on_epoch=kill)
    state = load_checkpoint(path)
    assert state is not None and state.keys() == _CHECKPOINT_KEYS | {"device_type"}  # no teacher
    resumed = fine_tune(config, task, teacher=teacher, checkpoint=path)
    assert resumed.resumed_from == 1
    assert _without_timing(resumed) == _without_timing(full)
    for (name, p), q in zip(full.model.state_dict().items(),
                            resumed.model.state_dict().values(), strict=True):
        assert torch.equal(p, q), name
