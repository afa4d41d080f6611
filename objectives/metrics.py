"""Validation metrics that compare across loss types, whatever loss was trained."""

from __future__ import annotations

import numpy as np
import torch
from sklearn.metrics import f1_score, recall_score


def classification_metrics(logits: torch.Tensor, targets: torch.Tensor) -> dict[str, float]:
    """Accuracy, cross-entropy, macro-F1 and ECE of float logits (N, C), int targets (N,)."""
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
        "val_ece": expected_calibration_error(logits, targets),
    }


def expected_calibration_error(logits: torch.Tensor, targets: torch.Tensor, bins: int = 15
                               ) -> float:
    """Expected calibration error of the top-1 prediction (Guo et al. 2017), in [0, 1].

    Confidences (max softmax probability) fall into `bins` equal-width bins (0, 1/bins], ...,
    ((bins-1)/bins, 1]; ECE = sum over bins of |bin| / N * |accuracy(bin) - confidence(bin)|.
    """
    if bins < 1:
        raise ValueError(f"bins must be at least 1, got {bins}")
    if len(targets) == 0:
        raise ValueError("ECE of no samples is undefined")
    confidence, predictions = torch.softmax(logits.float(), dim=1).max(dim=1)
    # bucketize against the inner edges puts x in bin i when edge[i-1] < x <= edge[i]: the
    # right-closed bins of the definition, and a confidence of exactly 1.0 in the last one.
    inner_edges = torch.linspace(0, 1, bins + 1, device=logits.device)[1:-1]
    index = torch.bucketize(confidence, inner_edges)
    # |B| / N * |acc(B) - conf(B)| = |sum of correct in B - sum of confidence in B| / N: three
    # bincounts rather than a loop over bins, in float64 so 10k summands lose nothing.
    correct = (predictions == targets.to(logits.device)).double()
    gap = (torch.bincount(index, weights=correct, minlength=bins)
           - torch.bincount(index, weights=confidence.double(), minlength=bins))
    return float(gap.abs().sum() / len(targets))


def per_class_recall(logits: torch.Tensor, targets: torch.Tensor, num_classes: int
                     ) -> list[float]:
    """Recall of each class 0 .. num_classes-1; 0.0 for a class without samples."""
    y_pred = logits.argmax(dim=1).cpu().numpy()
    recall = recall_score(targets.cpu().numpy(), y_pred, labels=np.arange(num_classes),
                          average=None, zero_division=0)
    return [float(r) for r in recall]
