"""Validation metrics that compare across loss types, whatever loss was trained."""

from __future__ import annotations

import numpy as np
import torch
from sklearn.metrics import f1_score


def classification_metrics(logits: torch.Tensor, targets: torch.Tensor) -> dict[str, float]:
    """Accuracy, cross-entropy and macro-F1 of float logits (N, C) against int targets (N,)."""
    logits = logits.float()
    predictions = logits.argmax(dim=1)
    num_classes = logits.shape[1]
    y_true, y_pred = targets.cpu().numpy(), predictions.cpu().numpy()
    return {
        "val_accuracy": float((predictions == targets).float().mean()),
        "val_cross_entropy": float(torch.nn.functional.cross_entropy(logits, targets)),
        "val_macro_f1": float(
            f1_score(y_true, y_pred, labels=np.arange(num_classes), average="macro",
                     zero_division=0)
        ),
    }
