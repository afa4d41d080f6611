from __future__ import annotations

import math

import pytest
import torch

from objectives.metrics import (
    classification_metrics,
    expected_calibration_error,
    per_class_recall,
)


def _logits(probabilities: list[list[float]]) -> torch.Tensor:
    # softmax(log p) = p when the rows of p sum to one.
    return torch.tensor(probabilities, dtype=torch.float64).log().float()


def test_ece_by_hand() -> None:
    # Bins are (k/15, (k+1)/15]; confidence is the largest probability.
    #   0.90 correct -> bin 13 (0.867, 0.933]: 1/5 * |1 - 0.90|            = 0.020
    #   0.95 wrong   -> bin 14 (0.933, 1.000]: 1/5 * |0 - 0.95|            = 0.190
    #   0.70 correct -> bin 10 (0.667, 0.733]  } 2/5 * |1/2 - (0.70+0.72)/2| = 0.084
    #   0.72 wrong   -> bin 10                 }
    #   0.55 wrong   -> bin 8  (0.533, 0.600]: 1/5 * |0 - 0.55|            = 0.110
    #                                                                  ECE = 0.404
    logits = _logits([
        [0.90, 0.05, 0.05],
        [0.03, 0.95, 0.02],
        [0.70, 0.20, 0.10],
        [0.10, 0.18, 0.72],
        [0.55, 0.25, 0.20],
    ])
    targets = torch.tensor([0, 0, 0, 0, 1])
    assert expected_calibration_error(logits, targets) == pytest.approx(0.404, abs=1e-6)
    # One bin: |accuracy - mean confidence| = |2/5 - 3.82/5|.
    assert expected_calibration_error(logits, targets, bins=1) == pytest.approx(0.364, abs=1e-6)


def test_ece_matches_a_loop_over_bins() -> None:
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(500, 7, generator=g) * 3
    targets = torch.randint(0, 7, (500,), generator=g)
    confidence, predictions = torch.softmax(logits, dim=1).max(dim=1)
    correct = (predictions == targets).float()
    edges = torch.linspace(0, 1, 16)
    expected = 0.0
    for lo, hi in zip(edges[:-1], edges[1:], strict=True):
        in_bin = (confidence > lo) & (confidence <= hi)
        if in_bin.any():
            expected += in_bin.float().mean().item() * abs(
                correct[in_bin].mean().item() - confidence[in_bin].mean().item())
    assert expected_calibration_error(logits, targets) == pytest.approx(expected, abs=1e-6)


def test_ece_is_zero_for_certain_correct_predictions() -> None:
    targets = torch.tensor([0, 2, 1, 2])
    logits = torch.nn.functional.one_hot(targets, 3).float() * 200  # softmax is one-hot
    assert expected_calibration_error(logits, targets) == 0.0


def test_ece_of_confident_wrong_predictions_is_the_confidence() -> None:
    logits = _logits([[0.99, 0.01]] * 3 + [[0.01, 0.99]] * 3)
    targets = torch.tensor([1, 1, 1, 0, 0, 0])
    assert expected_calibration_error(logits, targets) == pytest.approx(0.99, abs=1e-6)


def test_confidence_of_exactly_one_is_in_the_last_bin() -> None:
    logits = torch.tensor([[200.0, 0.0], *_logits([[0.05, 0.95]]).tolist()])
    assert torch.softmax(logits, dim=1)[0, 0].item() == 1.0
    targets = torch.tensor([1, 1])  # certain and wrong, then 0.95 and right
    # Together in bin 14: |1 - 1.95| / 2 = 0.475 (apart it would be (1 + 0.05) / 2 = 0.525,
    # and dropped 0.05 / 2 = 0.025).
    assert expected_calibration_error(logits, targets) == pytest.approx(0.475, abs=1e-6)
    assert expected_calibration_error(logits[:1], targets[:1]) == 1.0


def test_ece_rejects_bad_input() -> None:
    with pytest.raises(ValueError, match="bins"):
        expected_calibration_error(torch.zeros(2, 3), torch.zeros(2, dtype=torch.long), bins=0)
    with pytest.raises(ValueError, match="no samples"):
        expected_calibration_error(torch.zeros(0, 3), torch.zeros(0, dtype=torch.long))


def test_classification_metrics_include_ece() -> None:
    g = torch.Generator().manual_seed(1)
    logits = torch.randn(200, 5, generator=g)
    targets = torch.randint(0, 5, (200,), generator=g)
    metrics = classification_metrics(logits, targets)
    assert set(metrics) == {"val_accuracy", "val_cross_entropy", "val_macro_f1", "val_ece"}
    assert all(isinstance(v, float) and math.isfinite(v) for v in metrics.values())
    assert 0 <= metrics["val_ece"] <= 1
    assert metrics["val_ece"] == expected_calibration_error(logits, targets)


def test_per_class_recall_by_hand() -> None:
    # Predictions per true class (4 classes; class 3 has no samples but is predicted once):
    #   class 0: 0 0 1       -> recall 2/3
    #   class 1: 1 1 1 1 3   -> recall 4/5
    #   class 2: 2 0         -> recall 1/2
    #   class 3: (none)      -> 0 by convention (zero_division=0)
    targets = torch.tensor([0, 0, 0, 1, 1, 1, 1, 1, 2, 2])
    predicted = torch.tensor([0, 0, 1, 1, 1, 1, 1, 3, 2, 0])
    logits = torch.nn.functional.one_hot(predicted, 4).float()
    recall = per_class_recall(logits, targets, num_classes=4)
    assert recall == pytest.approx([2 / 3, 4 / 5, 1 / 2, 0.0])
    assert all(isinstance(r, float) for r in recall)


def test_per_class_recall_of_a_class_never_seen() -> None:
    targets = torch.tensor([0, 1, 1])
    logits = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 0.0]])
    assert per_class_recall(logits, targets, num_classes=3) == pytest.approx([1.0, 0.5, 0.0])


@pytest.mark.parametrize("seed", range(5))
def test_macro_f1_recall_and_counts_are_scikit_learns(seed: int) -> None:
    # Random predictions over 7 classes, two of them never predicted and one never true: the
    # zero_division cases, where a hand-written formula most easily goes wrong.
    from sklearn.metrics import confusion_matrix as sk_confusion
    from sklearn.metrics import f1_score, recall_score

    from objectives.metrics import confusion_matrix

    g = torch.Generator().manual_seed(seed)
    targets = torch.randint(0, 6, (300,), generator=g)
    guesses = torch.randint(0, 5, (300,), generator=g)
    predicted = torch.where(torch.rand(300, generator=g) < 0.6, targets, guesses)
    logits = torch.nn.functional.one_hot(predicted, 7).float()
    labels = list(range(7))
    y_true, y_pred = targets.numpy(), predicted.numpy()
    assert confusion_matrix(predicted, targets, 7).tolist() == \
        sk_confusion(y_true, y_pred, labels=labels).tolist()
    assert classification_metrics(logits, targets)["val_macro_f1"] == pytest.approx(
        f1_score(y_true, y_pred, labels=labels, average="macro", zero_division=0), abs=1e-12)
    assert per_class_recall(logits, targets, 7) == pytest.approx(
        list(recall_score(y_true, y_pred, labels=labels, average=None, zero_division=0)),
        abs=1e-12)
