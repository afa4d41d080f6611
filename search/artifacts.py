"""A finished trial's artifacts: confusion matrix (PNG and CSV), classification report, model."""

from __future__ import annotations

import io
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from objectives.metrics import confusion, report_text
from search.tracking import figure_png, write_bytes

if TYPE_CHECKING:
    from search.tracking import TrialRun


def log_evaluation(run: TrialRun, logits: torch.Tensor, targets: torch.Tensor,
                   class_names: tuple[str, ...]) -> None:
    """Queue the confusion matrix and the classification report of the final validation pass."""
    y_true = targets.numpy()
    y_pred = logits.argmax(dim=1).numpy()

    def render(run: TrialRun) -> None:
        matrix = confusion(y_true, y_pred, len(class_names))
        png = figure_png(lambda figure: _plot_confusion(figure, matrix, class_names))
        run.client.log_text(run.run_id, report_text(y_true, y_pred, class_names),
                            "classification_report.txt")
        write_bytes(run.client, run.run_id, png, "confusion_matrix.png")
        header = ",".join(["true\\predicted", *class_names])
        rows = [",".join([name, *map(str, row)])
                for name, row in zip(class_names, matrix, strict=True)]
        run.client.log_text(run.run_id, "\n".join([header, *rows]) + "\n", "confusion_matrix.csv")

    run.log_later("render confusion matrix", render)


def log_model(run: TrialRun, model: torch.nn.Module) -> None:
    """Queue the model's weights (a state dict) as `model/state_dict.pt`."""
    buffer = io.BytesIO()
    torch.save({k: v.detach().cpu() for k, v in model.state_dict().items()}, buffer)
    run.log_bytes(buffer.getvalue(), "model/state_dict.pt")


def _plot_confusion(figure: Any, matrix: np.ndarray, class_names: tuple[str, ...]) -> None:
    axes = figure.add_subplot()
    image = axes.imshow(matrix, cmap="Blues")
    figure.colorbar(image, ax=axes)
    ticks = np.arange(len(class_names))
    axes.set_xticks(ticks, labels=class_names, rotation=45 if len(class_names) > 10 else 0)
    axes.set_yticks(ticks, labels=class_names)
    axes.set_xlabel("predicted")
    axes.set_ylabel("true")
    if len(class_names) <= 20:
        limit = matrix.max() / 2 if matrix.size else 0
        for (i, j), count in np.ndenumerate(matrix):
            axes.text(j, i, str(count), ha="center", va="center",
                      color="white" if count > limit else "black", fontsize=8)
    axes.set_title("validation confusion matrix")
