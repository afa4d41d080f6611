"""A compute-free stand-in for fine-tuning: the `curves` study's learning curves.

A test instrument for the coordination layer and the pruners, not a claim about any data set.
Each configuration maps, per seed, to one learning curve of validation accuracy:

    acc(e) = chance + (top - chance) * (1 - exp(-rate * (e - start)))     for epoch e = 1..E

- `top`, the plateau, peaks at half the optimizer's usual learning rate (adamw 1e-3, momentum
  SGD 3e-2, ...) and falls off quadratically in log10(lr) above that, gently below it; a frozen
  backbone lowers it (freeze depth 5 costs 10 points); loss families differ by a point or
  two; a heavy explicit penalty costs plateau; each configuration has its own offset per seed.
- `rate` grows with the learning rate and falls with the batch size, so a low learning rate is
  a late starter that ends near the best; a frozen backbone rises fast and plateaus early.
- `start` is the warmup. Plain or momentum SGD (and, further out, the adaptive optimizers) at
  a learning rate ten times their usual one or more diverges: the trial fails at epoch 1-3 with
  a non-finite training loss, as real training does.
- Every epoch adds noise (standard deviation 0.6 points, 3 points in the unstable band just
  below divergence), drawn from the configuration and seed: the same trial gives the same
  curve, a resumed trial the same epochs.

`simulate` takes fine_tune's arguments and returns its result: every epoch it builds
validation logits with exactly the curve's accuracy (so every metric and artifact of a real
trial is real arithmetic), sleeps what that left of the simulated epoch time times
`time_scale` (0: no sleep), calls `on_epoch` and saves its checkpoint.
"""

from __future__ import annotations

import hashlib
import json
import math
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from objectives.checkpoint import load_checkpoint, save_checkpoint
from objectives.config import TrialConfig
from objectives.data import ImageData, Split, Task
from objectives.metrics import classification_metrics
from objectives.models import StagedNet, new_head, small_cnn
from objectives.train import DivergedError, EpochCallback, FineTuneResult

CLASSES = 10
VAL_IMAGES = 1000  # accuracy in steps of 0.001
TRAIN_IMAGES = 5000  # what the simulated epoch time and images a second are of
BEST_LR = {"sgd": 0.1, "momentum": 3e-2, "adam": 1e-3, "adamw": 1e-3, "rmsprop": 3e-4}
DIVERGES = {"sgd": 1.0, "momentum": 1.0, "adam": 1.5, "adamw": 1.5, "rmsprop": 1.5}  # decades
LOSS_OFFSET = {"cross_entropy": 0.0, "label_smoothing": 0.006, "kl": 0.004, "focal": -0.002,
               "bce": -0.006, "huber": -0.01, "mse": -0.012, "mae": -0.03, "distill": 0.01}
PEAK = -0.4  # decades from the usual rate to the best plateau: slower, and a little better
NOISE, UNSTABLE_NOISE = 0.006, 0.03


def _rng(config: TrialConfig, *parts: object) -> np.random.Generator:
    """A generator drawn from the configuration (its seed included) and `parts`: the same
    trial always draws the same numbers, in any process."""
    text = json.dumps([config.to_dict(), *map(str, parts)], sort_keys=True)
    return np.random.default_rng(int.from_bytes(hashlib.sha256(text.encode()).digest()[:8], "big"))


@dataclass(frozen=True)
class Curve:
    accuracy: tuple[float, ...]  # per epoch, 1..epochs (up to the divergence)
    diverges_at: int | None  # the epoch whose training loss is not finite, if any
    epoch_seconds: float  # simulated, before time_scale


def curve(config: TrialConfig) -> Curve:
    """The learning curve of `config` (its epochs and seed included); deterministic."""
    chance = 1.0 / CLASSES
    decades = math.log10(config.lr / BEST_LR[config.optimizer])  # > 0: above the usual rate
    off = decades - PEAK  # the plateau is highest a little below the usual rate
    top = 0.925 - (0.12 * off**2 if off > 0 else 0.015 * off**2)
    top -= 0.004 * config.freeze_depth**2
    top += LOSS_OFFSET.get(config.loss, 0.0)
    if config.loss == "distill":  # and half of what the loss on the labels brings
        top += LOSS_OFFSET.get(config.distill_base, 0.0) / 2
    if config.loss == "huber":  # a tiny delta is mean absolute error, slow and weak
        top -= 0.01 * abs(math.log10(config.huber_delta))
    if config.penalty != "none" and config.penalty_lambda > 0:
        top -= 0.03 * max(0.0, math.log10(config.penalty_lambda) + 4.0)  # heavy above 1e-4
    rng = _rng(config, "curve")
    top = min(0.97, max(chance + 0.02, top + rng.normal(0.0, 0.005)))
    rate = 0.6 * 10 ** (0.35 * min(decades, 0.5)) * math.sqrt(64 / config.batch_size)
    rate *= 1.0 + 0.4 * config.freeze_depth  # fewer weights to move: up sooner
    start = min(config.warmup_epochs, config.epochs / 2) * 0.5
    unstable = decades > DIVERGES[config.optimizer] - 0.5
    noise = rng.normal(0.0, UNSTABLE_NOISE if unstable else NOISE, config.epochs)
    accuracy = [float(min(0.99, max(0.0, chance + (top - chance)
                               * (1 - math.exp(-rate * max(0.0, e - start))) + noise[e - 1])))
                for e in range(1, config.epochs + 1)]
    diverges_at = None
    if decades >= DIVERGES[config.optimizer]:
        diverges_at = min(config.epochs, 1 + int(rng.integers(0, 3)))
        accuracy = accuracy[: diverges_at - 1]
    # A GPU epoch of a CIFAR-sized set: larger batches and frozen stages are quicker.
    seconds = 20.0 * (1.0 + 64 / config.batch_size) / 2 * (1.0 - 0.1 * config.freeze_depth)
    return Curve(tuple(accuracy), diverges_at, seconds)


def logits_with(accuracy: float, targets: torch.Tensor, rng: np.random.Generator
                ) -> torch.Tensor:
    """Logits (N, CLASSES) whose top-1 accuracy on `targets` is `accuracy` (to 1/N), each
    prediction as confident as the model is accurate (a calibrated model, give or take)."""
    n = len(targets)
    right = np.zeros(n, dtype=bool)
    right[rng.permutation(n)[: round(accuracy * n)]] = True
    y = targets.numpy()
    predicted = np.where(right, y, (y + rng.integers(1, CLASSES, n)) % CLASSES)
    p = min(max(accuracy, 1.5 / CLASSES), 0.995)
    margin = math.log(p * (CLASSES - 1) / (1 - p))  # softmax gives the top class p
    logits = torch.from_numpy(rng.normal(0.0, 0.1, (n, CLASSES))).float()
    logits[torch.arange(n), torch.from_numpy(predicted)] += margin
    return logits


@dataclass(frozen=True)
class SimulatedTask(Task):
    time_scale: float = 0.0  # seconds slept per simulated second of an epoch (0: no sleep)


def load_task(seed: int = 0, *, time_scale: float = 0.0) -> SimulatedTask:
    """The simulated task: labels for the validation logits, a tiny model for the artifacts.

    The images are blank: nothing ever looks at them (refit refuses a simulated study).
    """
    generator = torch.Generator().manual_seed(seed)

    def split(n: int) -> Split:
        return Split(torch.zeros(n, 1, 8, 8, dtype=torch.uint8),
                     torch.randint(0, CLASSES, (n,), generator=generator))

    data = ImageData(split(CLASSES * 10), split(VAL_IMAGES), split(CLASSES * 10),
                     tuple(f"class{i}" for i in range(CLASSES)), (0.5,), (0.25,))

    def make_model(head_seed: int) -> StagedNet:
        model = small_cnn(CLASSES, width=4)
        new_head(model, CLASSES, seed=head_seed)
        return model

    return SimulatedTask("curves", data, make_model, time_scale=time_scale)


def _resume(path: Path, config: TrialConfig) -> list[dict[str, float]]:
    state = load_checkpoint(path)
    if state is None:
        return []
    if not isinstance(state.get("history"), list) or state.get("config") != config.to_dict():
        raise ValueError(f"checkpoint {path} was not written for this trial's config; "
                         "refusing to resume")
    return list(state["history"])


def simulate(
    config: TrialConfig, task: Task, *, device: str | torch.device = "cpu",
    on_epoch: EpochCallback | None = None, compile: bool = False,
    checkpoint: str | Path | None = None, checkpoint_seconds: float = 0.0,
    teacher: torch.nn.Module | None = None, time_scale: float | None = None,
) -> FineTuneResult:
    """fine_tune's contract, simulated: see the module's docstring. `device`, `compile` and
    `teacher` are accepted and ignored (nothing is computed). `time_scale` defaults to the
    task's own (a SimulatedTask's), else 0."""
    del device, compile, teacher
    if time_scale is None:
        time_scale = task.time_scale if isinstance(task, SimulatedTask) else 0.0
    found = curve(config)
    targets = task.data.val.y.cpu()
    result = FineTuneResult(model=task.make_model(config.seed))
    if checkpoint is not None:
        result.history = _resume(Path(checkpoint), config)
        result.resumed_from = len(result.history)
    saved = time.monotonic()
    for epoch in range(result.resumed_from + 1, config.epochs + 1):
        began = time.monotonic()
        if epoch != found.diverges_at:
            accuracy = found.accuracy[epoch - 1]
            logits = logits_with(accuracy, targets, _rng(config, "logits", epoch))
            progress = epoch / config.epochs
            metrics = {"train_loss": -math.log(max(accuracy, 1e-3)) * 0.8,
                       **classification_metrics(logits, targets),
                       "lr": config.lr * 0.5 * (1 + math.cos(math.pi * progress)),
                       "epoch_seconds": found.epoch_seconds * time_scale,
                       "images_per_second": TRAIN_IMAGES / found.epoch_seconds}
        if time_scale > 0:
            # The epoch takes its simulated time, its evaluation (the metrics above, about
            # 5 ms) included: what a trial takes beyond it is coordination.
            time.sleep(max(0.0, found.epoch_seconds * time_scale - (time.monotonic() - began)))
        if epoch == found.diverges_at:
            raise DivergedError(epoch, math.nan)
        result.history.append(metrics)
        result.val_logits, result.val_targets = logits, targets
        if on_epoch is not None:
            on_epoch(epoch, metrics)
        if checkpoint is not None and time.monotonic() - saved >= checkpoint_seconds:
            saved = time.monotonic()  # after on_epoch, as in fine_tune
            save_checkpoint(checkpoint, {"config": config.to_dict(), "epoch": epoch,
                                         "history": result.history})
    if result.history and result.val_logits is None:  # resumed after its last epoch
        last = result.history[-1]["val_accuracy"]
        result.val_logits = logits_with(last, targets, _rng(config, "logits", config.epochs))
        result.val_targets = targets
    return result
