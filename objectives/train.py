"""The fine-tuning loop: plain PyTorch, one callback per epoch, no optuna or mlflow."""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import dataclass, field

import torch

from objectives.augment import random_crop, random_flip
from objectives.config import TrialConfig
from objectives.data import Split, Task
from objectives.losses import build_loss
from objectives.metrics import classification_metrics
from objectives.models import StagedNet, freeze, trainable_parameters
from objectives.optim import build_optimizer, lr_factor, set_lr
from objectives.penalties import build_penalty

EpochCallback = Callable[[int, dict[str, float]], None]


class DivergedError(RuntimeError):
    """The training loss became NaN or infinite; the run cannot go on."""

    def __init__(self, epoch: int, value: float) -> None:
        super().__init__(f"training loss is {value} at epoch {epoch}")
        self.epoch = epoch
        self.value = value


@dataclass
class FineTuneResult:
    model: StagedNet
    history: list[dict[str, float]] = field(default_factory=list)  # one entry per epoch
    val_logits: torch.Tensor | None = None  # of the last epoch, float32 on the CPU
    val_targets: torch.Tensor | None = None

    @property
    def final(self) -> dict[str, float]:
        return self.history[-1]


@torch.inference_mode()
def predict(model: StagedNet, split: Split, task: Task, *, batch_size: int = 1024) -> torch.Tensor:
    """Logits of a whole split, in large batches, as float32 on the CPU."""
    model.eval()
    device = next(model.parameters()).device
    outputs = []
    for start in range(0, len(split), batch_size):
        x = task.data.normalize(split.x[start : start + batch_size].to(device))
        with _autocast(device):
            outputs.append(model(x).float())
    return torch.cat(outputs).cpu()


def _autocast(device: torch.device):  # type: ignore[no-untyped-def]
    # bf16 autocast on CUDA only: on the CPU it is slower than float32 for these models.
    if device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return nullcontext()


def fine_tune(
    config: TrialConfig,
    task: Task,
    *,
    device: str | torch.device = "cpu",
    on_epoch: EpochCallback | None = None,
) -> FineTuneResult:
    """Fine-tune `task`'s pretrained model under `config`; call `on_epoch` after every epoch.

    `on_epoch(epoch, metrics)` gets the 1-based epoch and its validation metrics; anything it
    raises (a pruning signal, say) ends the run and propagates.
    """
    device = torch.device(device)
    data = task.data
    model = task.make_model(config.seed)
    freeze(model, config.freeze_depth)
    model.to(device)
    params = trainable_parameters(model)
    criterion = build_loss(config.loss, **config.loss_params())
    if config.penalty == "l2_sp":
        backbone = [p for p in model.backbone_parameters() if p.requires_grad]
        penalty = build_penalty(
            config.penalty, config.penalty_lambda, params=backbone,
            reference=[p.detach().clone() for p in backbone],
        )
    else:
        penalty = build_penalty(config.penalty, config.penalty_lambda, params=params)
    optimizer = build_optimizer(
        config.optimizer, params, lr=config.lr, momentum=config.momentum,
        nesterov=config.nesterov, weight_decay=config.weight_decay,
    )

    train = data.train.to(device)
    val_targets = data.val.y
    n = len(train)
    batch_size = min(config.batch_size, n)
    steps_per_epoch = math.ceil(n / batch_size)
    total_steps = config.epochs * steps_per_epoch
    warmup_steps = min(round(config.warmup_epochs * steps_per_epoch), total_steps - 1)
    generator = torch.Generator().manual_seed(config.seed)
    result = FineTuneResult(model=model)
    step = 0
    for epoch in range(1, config.epochs + 1):
        started = time.perf_counter()
        model.train()
        # Summed on the device and read once per epoch: no host sync inside the step loop.
        loss_sum = torch.zeros((), device=device)
        order = torch.randperm(n, generator=generator).to(device)
        for start in range(0, n, batch_size):
            index = order[start : start + batch_size]
            x = data.normalize(train.x[index])
            if data.crop_padding:
                x = random_crop(x, data.crop_padding, generator)
            if data.flip:
                x = random_flip(x, generator)
            lr = set_lr(optimizer, lr_factor(step, total_steps=total_steps,
                                             warmup_steps=warmup_steps))
            with _autocast(device):
                loss = criterion(model(x), train.y[index])
            objective = loss + penalty() if penalty.active else loss
            optimizer.zero_grad(set_to_none=True)
            objective.backward()
            optimizer.step()
            loss_sum += loss.detach() * len(index)
            step += 1
        train_loss = float(loss_sum) / n
        if not math.isfinite(train_loss):
            raise DivergedError(epoch, train_loss)
        train_seconds = time.perf_counter() - started
        logits = predict(model, data.val, task)
        metrics = {"train_loss": train_loss, **classification_metrics(logits, val_targets)}
        if penalty.active:
            with torch.no_grad():
                metrics["train_penalty"] = float(penalty())
        metrics["lr"] = lr
        metrics["epoch_seconds"] = time.perf_counter() - started
        metrics["images_per_second"] = n / train_seconds
        result.history.append(metrics)
        result.val_logits, result.val_targets = logits, val_targets
        if on_epoch is not None:
            on_epoch(epoch, metrics)
    return result
