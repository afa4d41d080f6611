"""Backbones as ordered stages plus a head, and freezing by depth.

Every backbone is wrapped as a `StagedNet`: `stages` from the input side to the deepest features,
global average pooling, then a linear `head`. Freeze depth d freezes `stages[:d]`; d equal to the
number of stages trains the head alone (a linear probe).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import torch
from torch import nn


class StagedNet(nn.Module):
    def __init__(self, stages: Sequence[nn.Module], head: nn.Linear) -> None:
        super().__init__()
        if not stages:
            raise ValueError("a StagedNet needs at least one stage")
        self.stages = nn.ModuleList(stages)
        self.head = head
        self.frozen_depth = 0

    def features(self, x: torch.Tensor) -> torch.Tensor:
        for stage in self.stages:
            x = stage(x)
        return torch.flatten(nn.functional.adaptive_avg_pool2d(x, 1), 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))

    def train(self, mode: bool = True) -> StagedNet:
        # Frozen stages keep their BatchNorm statistics: they stay in eval mode whatever the
        # training loop asks, so their running mean and variance are the pretrained ones.
        super().train(mode)
        if mode:
            for stage in self.stages[: self.frozen_depth]:
                stage.eval()
        return self

    def backbone_parameters(self) -> Iterator[nn.Parameter]:
        return self.stages.parameters()


def freeze(model: StagedNet, depth: int) -> None:
    """Freeze the first `depth` stages: no gradients, BatchNorm in eval mode, no optimizer slot."""
    n = len(model.stages)
    if not 0 <= depth <= n:
        raise ValueError(f"freeze depth must be in 0..{n} for this backbone, got {depth}")
    for i, stage in enumerate(model.stages):
        stage.requires_grad_(i >= depth)
    model.frozen_depth = depth
    model.train(model.training)


def trainable_parameters(model: nn.Module) -> list[nn.Parameter]:
    return [p for p in model.parameters() if p.requires_grad]


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


def new_head(model: StagedNet, num_classes: int, *, seed: int) -> None:
    """Replace the head with a freshly initialised one (seeded, without touching global RNG)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model.head = nn.Linear(model.head.in_features, num_classes)
