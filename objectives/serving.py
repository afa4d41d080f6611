"""A fine-tuned model packaged for use: uint8 images in, logits out.

The search feeds its models normalized, resized float batches; a user of the refit model should
not have to know the normalization or the resolution it was trained at, so both travel inside.
"""

from __future__ import annotations

import torch
from torch import nn

from objectives.augment import resize
from objectives.data import ImageData


class ImageClassifier(nn.Module):
    def __init__(self, model: nn.Module, data: ImageData, *, resolution: int = 0) -> None:
        super().__init__()
        self.model = model
        self.resolution = resolution
        self.class_names = list(data.class_names)
        self.channels = len(data.mean)
        std = torch.tensor(data.std, dtype=torch.float32)
        self.scale: torch.Tensor
        self.shift: torch.Tensor
        self.register_buffer("scale", (1.0 / (255.0 * std)).view(1, -1, 1, 1))
        self.register_buffer("shift", (-torch.tensor(data.mean) / std).view(1, -1, 1, 1))

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """Images (N, C, H, W) with 0-255 pixel values (uint8 or float) to logits (N, classes)."""
        x = images.to(self.scale.device).float()
        if x.shape[1] == 1 and self.channels > 1:  # grey into a three-channel backbone
            x = x.expand(-1, self.channels, -1, -1)
        return self.model(resize(torch.addcmul(self.shift, x, self.scale), self.resolution))
