"""Backbones as ordered stages plus a head, and freezing by depth.

Every backbone is wrapped as a `StagedNet`: `stages` from the input side to the deepest features,
global average pooling, an optional pretrained `neck` on the pooled (N, C, 1, 1) tensor (ConvNeXt's
LayerNorm, MobileNetV3's pre-logit Linear), then a new linear `head`. Freeze depth d freezes
`stages[:d]`; d equal to the number of stages also freezes the neck and trains the head alone (a
linear probe).
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Iterator, Sequence
from typing import Any

import torch
from torch import nn

# The same number of stages for every backbone, so freeze depth 0..5 means the same thing for all
# of them (5 = linear probe).
NUM_STAGES = 5


class StagedNet(nn.Module):
    def __init__(
        self, stages: Sequence[nn.Module], head: nn.Linear, neck: nn.Module | None = None
    ) -> None:
        super().__init__()
        if not stages:
            raise ValueError("a StagedNet needs at least one stage")
        self.stages = nn.ModuleList(stages)
        self.neck = neck
        self.head = head
        self.frozen_depth = 0

    def features(self, x: torch.Tensor) -> torch.Tensor:
        for stage in self.stages:
            x = stage(x)
        x = nn.functional.adaptive_avg_pool2d(x, 1)
        if self.neck is not None:
            x = self.neck(x)
        return torch.flatten(x, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))

    def train(self, mode: bool = True) -> StagedNet:
        # Frozen stages keep their BatchNorm statistics: they stay in eval mode whatever the
        # training loop asks, so their running mean and variance are the pretrained ones.
        super().train(mode)
        if mode:
            for stage in self.stages[: self.frozen_depth]:
                stage.eval()
            if self.neck is not None and self.frozen_depth == len(self.stages):
                self.neck.eval()
        return self

    def backbone_parameters(self) -> Iterator[nn.Parameter]:
        """The pretrained parameters (stages and neck), which the L2-SP penalty anchors."""
        neck = self.neck.parameters() if self.neck is not None else iter(())
        return itertools.chain(self.stages.parameters(), neck)


def freeze(model: StagedNet, depth: int) -> None:
    """Freeze the first `depth` stages: no gradients, BatchNorm in eval mode, no optimizer slot.

    The neck sits after the last stage, so it is frozen only with all of them (a linear probe).
    """
    n = len(model.stages)
    if not 0 <= depth <= n:
        raise ValueError(f"freeze depth must be in 0..{n} for this backbone, got {depth}")
    for i, stage in enumerate(model.stages):
        stage.requires_grad_(i >= depth)
    if model.neck is not None:
        model.neck.requires_grad_(depth < n)
    model.frozen_depth = depth
    model.train(model.training)


def trainable_parameters(model: nn.Module) -> list[nn.Parameter]:
    return [p for p in model.parameters() if p.requires_grad]


def layerwise_groups(model: StagedNet, lr: float, lr_decay: float) -> list[dict[str, Any]]:
    """Optimizer param groups of the trainable parameters with layer-wise learning rates.

    The head gets `lr`, the deepest stage `lr * lr_decay`, each stage below `lr_decay` times
    the one above (Howard & Ruder 2018, "ULMFiT"): features near the input are the most
    general, so they should move least. The neck shares the deepest stage's rate (pretrained,
    and trainable exactly when that stage is). The head's group comes first, so the first
    group's lr is the peak one. Frozen stages get no group. With `lr_decay == 1` it is one
    group in `model.parameters()` order, the same optimizer as a plain parameter list.
    """
    lr_decay = float(lr_decay)
    if not 0.0 < lr_decay <= 1.0:  # also refuses NaN
        raise ValueError(f"lr_decay must be in (0, 1], got {lr_decay!r}")
    if not (math.isfinite(lr) and lr > 0):
        raise ValueError(f"lr must be finite and > 0, got {lr!r}")
    trainable = trainable_parameters(model)
    if lr_decay == 1.0:
        return [{"params": trainable, "lr": lr}] if trainable else []
    neck = list(model.neck.parameters()) if model.neck is not None else []
    # From the head down: (modules' parameters, depth below the head).
    levels = [(list(model.head.parameters()), 0)]
    deepest = len(model.stages) - 1
    for i in range(deepest, -1, -1):
        stage = list(model.stages[i].parameters())
        levels.append((stage + neck if i == deepest else stage, deepest - i + 1))
    groups: list[dict[str, Any]] = []
    for params, depth in levels:
        params = [p for p in params if p.requires_grad]
        if params:
            groups.append({"params": params, "lr": lr * lr_decay**depth})
    if sum(len(g["params"]) for g in groups) != len(trainable):  # a module outside the layout
        raise ValueError("the model has trainable parameters outside its stages, neck and head")
    return groups


def _conv_block(c_in: int, c_out: int, *, pool: bool) -> nn.Sequential:
    layers: list[nn.Module] = [
        nn.Conv2d(c_in, c_out, 3, padding=1, bias=False),
        nn.BatchNorm2d(c_out),
        nn.ReLU(inplace=True),
        nn.Conv2d(c_out, c_out, 3, padding=1, bias=False),
        nn.BatchNorm2d(c_out),
        nn.ReLU(inplace=True),
    ]
    if pool:
        layers.append(nn.MaxPool2d(2))
    return nn.Sequential(*layers)


def small_cnn(num_classes: int, *, in_channels: int = 1, width: int = 32) -> StagedNet:
    """A small three-stage CNN for 8x8 to 32x32 inputs (the digits study's backbone)."""
    stages = [
        _conv_block(in_channels, width, pool=True),
        _conv_block(width, 2 * width, pool=True),
        _conv_block(2 * width, 4 * width, pool=False),
    ]
    return StagedNet(stages, nn.Linear(4 * width, num_classes))


def five_stage_cnn(num_classes: int, *, widths: Sequence[int] = (16, 32, 64, 128, 256)
                   ) -> StagedNet:
    """A small CNN in NUM_STAGES stages for 32x32 colour images (the cifar10-transfer study's
    backbone, about 1.2M parameters): a 3x3 stem at full resolution, then four stages that each
    halve the side first (max pooling) and apply two 3x3 convolutions. Pooling before the
    convolutions keeps it cheap: about 1,800 training images a second on two CPU cores."""
    if len(widths) != NUM_STAGES:
        raise ValueError(f"five_stage_cnn needs {NUM_STAGES} widths, got {len(widths)}")
    stem = nn.Sequential(nn.Conv2d(3, widths[0], 3, padding=1, bias=False),
                         nn.BatchNorm2d(widths[0]), nn.ReLU(inplace=True))
    stages = [stem, *(nn.Sequential(nn.MaxPool2d(2), *_conv_block(c_in, c_out, pool=False))
                      for c_in, c_out in itertools.pairwise(widths))]
    return StagedNet(stages, nn.Linear(widths[-1], num_classes))


def new_head(model: StagedNet, num_classes: int, *, seed: int) -> None:
    """Replace the head with a freshly initialised one (seeded, without touching global RNG)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model.head = nn.Linear(model.head.in_features, num_classes)
