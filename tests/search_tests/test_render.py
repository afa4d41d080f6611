"""The trial artifacts drawn from counts: the same as scikit-learn's, whatever the classes."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from sklearn.metrics import classification_report, confusion_matrix

from objectives.metrics import confusion_matrix as counted
from search.tracking.render import report_text


def confusion(y_true: np.ndarray, y_pred: np.ndarray, classes: int) -> np.ndarray:
    return counted(torch.from_numpy(y_pred), torch.from_numpy(y_true), classes).numpy()


@pytest.mark.parametrize("seed", range(6))
def test_the_classification_report_is_scikit_learns(seed: int) -> None:
    rng = np.random.default_rng(seed)
    classes = int(rng.integers(2, 13))
    n = int(rng.integers(10, 400))
    y_true = rng.integers(0, classes, n)
    # Some classes never predicted, and (by chance, at small n) some never true.
    y_pred = np.where(rng.random(n) < 0.7, y_true, rng.integers(0, max(1, classes - 2), n))
    names = tuple(f"class-{i}" * int(rng.integers(1, 4)) for i in range(classes))
    matrix = confusion(y_true, y_pred, classes)
    assert matrix.tolist() == confusion_matrix(y_true, y_pred,
                                               labels=np.arange(classes)).tolist()
    assert report_text(matrix, names) == classification_report(
        y_true, y_pred, labels=np.arange(classes), target_names=list(names), digits=4,
        zero_division=0)


def test_a_class_with_no_samples_and_no_predictions_scores_zero() -> None:
    matrix = confusion(np.array([0, 0, 1]), np.array([0, 1, 1]), 3)
    report = report_text(matrix, ("a", "b", "c")).splitlines()
    assert report[4].split() == ["c", "0.0000", "0.0000", "0.0000", "0"]
    assert report[6].split() == ["accuracy", "0.6667", "3"]
