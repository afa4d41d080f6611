"""A finished trial's artifacts: confusion matrix (PNG and CSV), classification report, model."""

from __future__ import annotations

import io
from functools import partial
from typing import TYPE_CHECKING

import torch

from objectives.metrics import confusion_matrix
from search.tracking.render import confusion_csv, confusion_png, report_text

if TYPE_CHECKING:
    from search.tracking.tracker import TrialRun


def log_evaluation(run: TrialRun, logits: torch.Tensor, targets: torch.Tensor,
                   class_names: tuple[str, ...]) -> None:
    """Stage the confusion matrix and the classification report of the final validation pass."""
    matrix = confusion_matrix(logits.argmax(dim=1), targets, len(class_names)).cpu().numpy()
    run.add_artifact("confusion_matrix.csv", confusion_csv(matrix, class_names))
    # Rendered by the writer process: partials of torch-free functions pickle cheaply.
    run.add_artifact("confusion_matrix.png", partial(confusion_png, matrix, class_names))
    run.add_artifact("classification_report.txt",
                     partial(report_text, matrix, class_names))


def log_model(run: TrialRun, model: torch.nn.Module) -> None:
    """Stage the model's weights (a state dict) as `model/state_dict.pt`."""
    buffer = io.BytesIO()
    torch.save({k: v.detach().cpu() for k, v in model.state_dict().items()}, buffer)
    run.add_artifact("model/state_dict.pt", buffer.getvalue())
