"""Validation metrics that compare across loss types, whatever loss was trained."""

from __future__ import annotations

import torch

# Macro-F1 and recall are computed here from a confusion matrix (one bincount), not with
# scikit-learn's f1_score and recall_score: those validate and re-encode their inputs on every
# call: 2.2 ms an epoch on digits' 360 validation samples (now 0.22 ms, on the data's device).
# The results are the same as scikit-learn's with zero_division=0 (the tests compare).


def confusion_matrix(predictions: torch.Tensor, targets: torch.Tensor, num_classes: int
                     ) -> torch.Tensor:
    """Counts (num_classes, num_classes), int64: rows the true class, columns the predicted."""
    flat = targets.to(predictions.device, torch.int64) * num_classes + predictions.to(torch.int64)
    return torch.bincount(flat, minlength=num_classes * num_classes).reshape(num_classes,
                                                                             num_classes)


def _ratio(numerator: torch.Tensor, denominator: torch.Tensor) -> torch.Tensor:
    """numerator / denominator, 0 where the denominator is 0 (scikit-learn's zero_division=0)."""
    numerator, denominator = numerator.double(), denominator.double()
    return torch.where(denominator > 0, numerator / denominator.clamp(min=1),
                       torch.zeros_like(numerator))


def f1_per_class(matrix: torch.Tensor) -> torch.Tensor:
    """F1 of each class from a confusion matrix: 2TP / (2TP + FP + FN), 0 where undefined."""
    tp = matrix.diagonal()
    return _ratio(2 * tp, matrix.sum(dim=0) + matrix.sum(dim=1))


def recall_per_class(matrix: torch.Tensor) -> torch.Tensor:
    """Recall of each class from a confusion matrix: TP / support, 0 without samples."""
    return _ratio(matrix.diagonal(), matrix.sum(dim=1))


def classification_metrics(logits: torch.Tensor, targets: torch.Tensor) -> dict[str, float]:
    """Accuracy, cross-entropy, macro-F1 and ECE of float logits (N, C), int targets (N,)."""
    logits = logits.float()
    predictions = logits.argmax(dim=1)
    matrix = confusion_matrix(predictions, targets, logits.shape[1])
    return {
        "val_accuracy": float((predictions == targets).float().mean()),
        "val_cross_entropy": float(torch.nn.functional.cross_entropy(logits, targets)),
        "val_macro_f1": float(f1_per_class(matrix).mean()),
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
    matrix = confusion_matrix(logits.argmax(dim=1), targets, num_classes)
    return [float(r) for r in recall_per_class(matrix).cpu()]
