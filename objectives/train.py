"""The fine-tuning loop: plain PyTorch, one callback per epoch, no optuna or mlflow."""

from __future__ import annotations

import math
import time
import warnings
from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from objectives.augment import random_crop, random_flip, resize
from objectives.checkpoint import load_checkpoint, save_checkpoint
from objectives.compiled import COMPILED, CompiledModel
from objectives.config import TrialConfig
from objectives.data import ImageData, Split, Task
from objectives.losses import DISTILL, DistillLoss, build_loss
from objectives.metrics import classification_metrics
from objectives.models import StagedNet, freeze, layerwise_groups, trainable_parameters
from objectives.optim import build_optimizer, lr_factor, set_lr
from objectives.penalties import build_penalty

EpochCallback = Callable[[int, dict[str, float]], None]

# cuDNN autotuning on CUDA: each new input shape (batch size x resolution, train or eval) is
# timed once per process against every algorithm, then its fastest kernel is reused. A trial
# sees few shapes (the short last batch is one more; evaluation is padded to a fixed batch) and
# a worker's later trials reuse what earlier ones tuned. `python -m search.bench --only gpu`
# measures the first epoch's cost with and without it.
CUDNN_BENCHMARK = True


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
    resumed_from: int = 0  # the epoch a checkpoint held when the run began; 0 = fresh start
    compiled: str | None = None  # with compile: "compiled", or "fallback: why" (ran eagerly)

    @property
    def final(self) -> dict[str, float]:
        return self.history[-1]


def augment(x: torch.Tensor, data: ImageData, generator: torch.Generator) -> torch.Tensor:
    """The training augmentation of a uint8 batch, on uint8 (a quarter of the bytes of float):
    random crop with zero padding, random flip. Apart from `to_input` so that a teacher can see
    the very same draws as the student, as stored pixels."""
    if data.crop_padding:
        x = random_crop(x, data.crop_padding, generator)
    if data.flip:
        x = random_flip(x, generator)
    return x


def to_input(
    x: torch.Tensor, data: ImageData, *, resolution: int = 0, channels_last: bool = False
) -> torch.Tensor:
    """A uint8 batch to the model's float input: normalized, resized to `resolution` (ImageNet
    backbones transfer much better above 32x32), laid out channels-last for the GPU's convs."""
    x = resize(data.normalize(x), resolution)
    return x.contiguous(memory_format=torch.channels_last) if channels_last else x


def prepare(
    x: torch.Tensor, data: ImageData, *, resolution: int = 0,
    generator: torch.Generator | None = None, channels_last: bool = False,
) -> torch.Tensor:
    """A uint8 batch, already on its device, to the model's float input; augmented first when
    given a `generator` (training)."""
    if generator is not None:
        x = augment(x, data, generator)
    return to_input(x, data, resolution=resolution, channels_last=channels_last)


def eval_batch_size(side: int) -> int:
    """Images per evaluation batch: 1024 up to 64x64, fewer as images grow (memory)."""
    return max(128, min(1024, 1024 * 64 * 64 // max(side, 1) ** 2))


@torch.inference_mode()
def predict(model: torch.nn.Module, split: Split, task: Task, *, batch_size: int | None = None,
            resolution: int = 0, fixed_shape: bool | None = None) -> torch.Tensor:
    """Logits of a whole split, in large batches, as float32 on the CPU.

    `fixed_shape` (default: on CUDA) pads the last batch to the full batch size, so that every
    batch has one shape: one graph under torch.compile, one cuDNN autotuning. In eval mode each
    image's logits do not depend on the others in its batch, so the padding changes nothing.
    """
    model.eval()
    device = next(model.parameters()).device
    side = resolution or split.x.shape[-1]
    batch_size = min(batch_size or eval_batch_size(side), len(split))
    channels_last = device.type == "cuda"
    fixed_shape = channels_last if fixed_shape is None else fixed_shape
    outputs = []
    for start in range(0, len(split), batch_size):
        batch = split.x[start : start + batch_size].to(device)
        real = len(batch)
        if fixed_shape and real < batch_size:
            batch = torch.cat([batch, batch.new_zeros((batch_size - real, *batch.shape[1:]))])
        x = prepare(batch, task.data, resolution=resolution, channels_last=channels_last)
        with _autocast(device):
            outputs.append(model(x)[:real].float())
    # One transfer (and so one wait for the device) per split, not one per batch.
    return torch.cat(outputs).cpu()


def _autocast(device: torch.device):  # type: ignore[no-untyped-def]
    # bf16 autocast on CUDA only: on the CPU it is slower than float32 for these models.
    if device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return nullcontext()


# Required in a checkpoint; "device_type" is optional (checkpoints written before it lack it).
_CHECKPOINT_KEYS = frozenset({
    "config", "epoch", "step", "model", "optimizer", "generator", "reference", "history",
    "val_logits", "val_targets",
})


def _resume_state(path: str | Path, config: TrialConfig) -> dict[str, Any] | None:
    """The checkpoint at `path` if there is one, after checking it belongs to `config`."""
    state = load_checkpoint(path)
    if state is None:
        return None
    if missing := _CHECKPOINT_KEYS - state.keys():
        raise ValueError(f"checkpoint {path} cannot be read: it lacks {sorted(missing)}; "
                         "delete it to start the trial over")
    ours, theirs = config.to_dict(), state["config"]
    if theirs != ours:
        theirs = theirs if isinstance(theirs, dict) else {}
        differ = sorted(k for k in ours.keys() | theirs.keys()
                        if k not in ours or k not in theirs or ours[k] != theirs[k])
        raise ValueError(f"checkpoint {path} was written under another config (it differs in "
                         f"{', '.join(differ)}): it belongs to another trial; refusing to resume")
    return state


def build_criterion(config: TrialConfig) -> torch.nn.Module:
    """The loss `config` trains with; for distill, with its base loss built from the config."""
    if config.loss != DISTILL:
        return build_loss(config.loss, **config.loss_params())
    base = build_loss(config.distill_base, **config.loss_params(config.distill_base))
    return DistillLoss(base=base, **config.loss_params())


def _check_teacher(teacher: torch.nn.Module | None, config: TrialConfig, data: ImageData,
                   device: torch.device) -> torch.nn.Module | None:
    """The teacher on `device` in eval mode if `config` distills, else None (it is ignored).

    One dry forward on one training image checks, before any training, that it maps a uint8
    batch to logits over the task's classes.
    """
    if config.loss != DISTILL:
        return None
    if teacher is None:
        raise ValueError("the distill loss needs a teacher model: pass fine_tune(..., "
                         "teacher=MODULE), a module from uint8 images to logits")
    teacher.to(device).eval()
    if device.type == "cuda":
        teacher.to(memory_format=torch.channels_last)  # its convs, like the student's
    with torch.inference_mode(), _autocast(device):
        out = teacher(data.train.x[:1].to(device))
    if out.ndim != 2:
        raise ValueError(f"the teacher must return logits (N, classes), got shape "
                         f"{tuple(out.shape)}")
    if out.shape[1] != data.num_classes:
        raise ValueError(f"the teacher has {out.shape[1]} classes but the task has "
                         f"{data.num_classes}: they must match")
    return teacher


def fine_tune(
    config: TrialConfig,
    task: Task,
    *,
    device: str | torch.device = "cpu",
    on_epoch: EpochCallback | None = None,
    compile: bool = False,
    checkpoint: str | Path | None = None,
    checkpoint_seconds: float = 0.0,
    teacher: torch.nn.Module | None = None,
) -> FineTuneResult:
    """Fine-tune `task`'s pretrained model under `config`; call `on_epoch` after every epoch.

    `on_epoch(epoch, metrics)` gets the 1-based epoch and its validation metrics; anything it
    raises (a pruning signal, say) ends the run and propagates. `compile` runs the model
    through `torch.compile` (worth its start-up cost on long GPU trials only).

    With a `checkpoint` path, everything needed to continue exactly (model, optimizer, step,
    the generator of shuffling and augmentation, the l2_sp anchor, history, last logits) is
    saved there atomically after each epoch, once `on_epoch` has returned (so every epoch it
    holds was reported). If the file exists at the start, the run continues after the epoch it
    holds (`resumed_from`); epochs done are neither trained nor reported again. A checkpoint
    of another config is refused (ValueError). The file is left in place: removing it once
    the trial is recorded is the caller's job.
    `checkpoint_seconds` saves only when that long has passed since the last save (or the
    start): on one-second epochs a save per epoch would cost more than it can win back.

    `teacher` is used by the distill loss only (which refuses to run without one), and ignored
    otherwise. It maps a uint8 batch (N, C, H, W) of stored 0-255 pixels to logits (N, classes)
    (objectives.serving.ImageClassifier, say: it normalizes and resizes inside). It is moved to
    `device` and put in eval mode, runs under inference mode, sees the same augmented images
    as the student, is never trained, and is not part of the checkpoint.

    On CUDA: bf16 autocast, channels-last, cuDNN autotuning, fused optimizers, and nothing in
    the step loop waits for the device; the loss is summed there and read once per epoch.

    Under `compile`, shapes are fixed: the short last batch of an epoch is dropped (dynamic
    shapes would cost a graph of their own) and evaluation is padded. `result.compiled` says
    whether the run stayed compiled ("compiled") or fell back to eager ("fallback: ...").
    A checkpoint written on another device type (a retry moved from a GPU to a CPU node) is
    resumed with the shuffling and augmentation generator reseeded, since the two generators'
    states do not convert; everything else continues exactly.
    """
    device = torch.device(device)
    cuda = device.type == "cuda"
    if cuda:
        torch.backends.cudnn.benchmark = CUDNN_BENCHMARK
    data = task.data
    # Read first: a foreign or corrupt checkpoint fails before any model is built.
    resume = _resume_state(checkpoint, config) if checkpoint is not None else None
    teacher = _check_teacher(teacher, config, data, device)
    model = task.make_model(config.seed)
    freeze(model, config.freeze_depth)
    model.to(device)
    if cuda:
        model.to(memory_format=torch.channels_last)
    forward = CompiledModel(model) if compile else model
    params = trainable_parameters(model)
    criterion = build_criterion(config)
    if config.penalty == "l2_sp":
        backbone = [p for p in model.backbone_parameters() if p.requires_grad]
        # The anchor is the weights the run started from. A resumed run reads them from the
        # checkpoint rather than trusting make_model to rebuild the very same ones.
        if resume is not None and resume["reference"] is not None:
            reference = [r.to(device) for r in resume["reference"]]
        else:
            reference = [p.detach().clone() for p in backbone]
        penalty = build_penalty(config.penalty, config.penalty_lambda, params=backbone,
                                reference=reference)
    else:
        penalty = build_penalty(config.penalty, config.penalty_lambda, params=params)
    # lr_decay 1 passes the flat list: the very optimizer of a run without layer-wise rates.
    groups = params if config.lr_decay == 1.0 else layerwise_groups(model, config.lr,
                                                                     config.lr_decay)
    optimizer = build_optimizer(
        config.optimizer, groups, lr=config.lr, momentum=config.momentum,
        nesterov=config.nesterov, weight_decay=config.weight_decay, fused=cuda,
    )

    train = data.train.to(device)
    val_targets = data.val.y.cpu()  # the logits come back to the CPU for the metrics
    n = len(train)
    batch_size = min(config.batch_size, n)
    # Compiled: whole batches only (one shape, one graph); the order is reshuffled every epoch.
    used = n - n % batch_size if compile else n
    steps_per_epoch = used // batch_size if compile else math.ceil(n / batch_size)
    total_steps = config.epochs * steps_per_epoch
    warmup_steps = min(round(config.warmup_epochs * steps_per_epoch), total_steps - 1)
    # On the training device, so that shuffling and augmentation draws need no host copies.
    generator = torch.Generator(device=device).manual_seed(config.seed)
    result = FineTuneResult(model=model)
    step = done = 0
    if resume is not None:
        model.load_state_dict(resume["model"])
        optimizer.load_state_dict(resume["optimizer"])  # moves its tensors to the params' device
        _restore_generator(generator, resume, config.seed, checkpoint)
        step, done = resume["step"], resume["epoch"]
        result.history = resume["history"]
        result.val_logits, result.val_targets = resume["val_logits"], resume["val_targets"]
        result.resumed_from = done
    saved = time.monotonic()
    for epoch in range(done + 1, config.epochs + 1):
        started = time.perf_counter()
        model.train()
        # Summed on the device and read once per epoch: no host sync inside the step loop.
        loss_sum = torch.zeros((), device=device)
        order = torch.randperm(n, generator=generator, device=device)
        for start in range(0, used, batch_size):
            index = order[start : start + batch_size]
            images = augment(train.x[index], data, generator)
            x = to_input(images, data, resolution=config.resolution, channels_last=cuda)
            lr = set_lr(optimizer, lr_factor(step, total_steps=total_steps,
                                             warmup_steps=warmup_steps))
            with _autocast(device):
                if teacher is None:
                    loss = criterion(forward(x), train.y[index])
                else:
                    with torch.inference_mode():
                        teacher_logits = teacher(images)
                    loss = criterion(forward(x), train.y[index], teacher_logits)
            objective = loss + penalty() if penalty.active else loss
            optimizer.zero_grad(set_to_none=True)
            objective.backward()
            optimizer.step()
            loss_sum += loss.detach() * len(index)
            step += 1
        train_loss = float(loss_sum) / used
        if not math.isfinite(train_loss):
            raise DivergedError(epoch, train_loss)
        train_seconds = time.perf_counter() - started
        logits = predict(forward, data.val, task, resolution=config.resolution,
                         fixed_shape=cuda or compile)
        metrics = {"train_loss": train_loss, **classification_metrics(logits, val_targets)}
        if penalty.active:
            with torch.no_grad():
                metrics["train_penalty"] = float(penalty())
        metrics["lr"] = lr
        metrics["epoch_seconds"] = time.perf_counter() - started
        metrics["images_per_second"] = used / train_seconds
        if isinstance(forward, CompiledModel):  # 1 while the run stays compiled, else 0
            metrics["compiled"] = float(forward.status == COMPILED)
        result.history.append(metrics)
        result.val_logits, result.val_targets = logits, val_targets
        if on_epoch is not None:
            on_epoch(epoch, metrics)
        if checkpoint is not None and time.monotonic() - saved >= checkpoint_seconds:
            saved = time.monotonic()
            # After on_epoch: every epoch a checkpoint holds has been reported, so a worker
            # killed between the two trains that epoch again rather than never reporting it.
            save_checkpoint(checkpoint, {
                "config": config.to_dict(), "epoch": epoch, "step": step,
                "model": model.state_dict(), "optimizer": optimizer.state_dict(),
                "generator": generator.get_state(), "device_type": device.type,
                "reference": penalty.reference, "history": result.history,
                "val_logits": logits, "val_targets": val_targets,
            })
    if isinstance(forward, CompiledModel):
        result.compiled = forward.status
    return result


def _restore_generator(generator: torch.Generator, state: dict[str, Any], seed: int,
                       path: str | Path | None) -> None:
    """The checkpoint's shuffling and augmentation generator state, on `generator`.

    A CPU generator's state (Mersenne Twister, 5,056 bytes) and a CUDA one's (Philox seed and
    offset, 16 bytes) do not convert into each other: a checkpoint from the other device type
    reseeds the generator from the seed and the epoch reached, with a warning.
    """
    saved = state["generator"]
    ours = generator.device.type
    theirs = state.get("device_type") or (
        ours if saved.numel() == generator.get_state().numel() else "another device type")
    if theirs == ours:
        generator.set_state(saved)  # a CPU byte tensor, whatever the device
        return
    generator.manual_seed(seed * 1_000_003 + int(state["epoch"]))
    warnings.warn(f"checkpoint {path} was written on {theirs}, this run is on {ours}: the "
                  "shuffling and augmentation generator is reseeded (the rest resumes exactly)",
                  RuntimeWarning, stacklevel=3)
