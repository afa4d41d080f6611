"""A finished trial's artifacts: confusion matrix (PNG and CSV), classification report, model."""

from __future__ import annotations

import io
from typing import TYPE_CHECKING

import numpy as np
import torch

from objectives.metrics import confusion, report_text

if TYPE_CHECKING:
    from search.tracking import TrialRun


def log_evaluation(run: TrialRun, logits: torch.Tensor, targets: torch.Tensor,
                   class_names: tuple[str, ...]) -> None:
    """Stage the confusion matrix and the classification report of the final validation pass."""
    y_true = targets.numpy()
    y_pred = logits.argmax(dim=1).numpy()
    matrix = confusion(y_true, y_pred, len(class_names))
    header = ",".join(["true\\predicted", *class_names])
    rows = [",".join([name, *map(str, row)])
            for name, row in zip(class_names, matrix, strict=True)]
    run.add_artifact("confusion_matrix.csv", "\n".join([header, *rows]) + "\n")
    run.add_artifact("confusion_matrix.png", lambda: confusion_png(matrix, class_names))
    run.add_artifact("classification_report.txt",
                     lambda: report_text(y_true, y_pred, class_names))


def log_model(run: TrialRun, model: torch.nn.Module) -> None:
    """Stage the model's weights (a state dict) as `model/state_dict.pt`."""
    buffer = io.BytesIO()
    torch.save({k: v.detach().cpu() for k, v in model.state_dict().items()}, buffer)
    run.add_artifact("model/state_dict.pt", buffer.getvalue())


def confusion_png(matrix: np.ndarray, class_names: tuple[str, ...]) -> bytes:
    """The confusion matrix as a PNG heat map with counts: rows true, columns predicted.

    Drawn with Pillow rather than matplotlib: a matplotlib figure costs about 175 ms of CPU per
    trial here, which on a 2-core machine is most of the search's overhead; this costs ~2 ms.
    """
    from PIL import Image, ImageDraw, ImageFont

    n = len(class_names)
    cell = 40 if n <= 20 else max(8, 800 // n)
    font = ImageFont.load_default(size=max(8, min(14, cell // 3)))
    # Long names do not fit above a column: number the columns and the rows then.
    numbered = max(len(c) for c in class_names) * 7 > cell
    rows = [f"{i} {c}" if numbered else c for i, c in enumerate(class_names)]
    columns = [str(i) for i in range(n)] if numbered else list(class_names)
    label = max(40, 8 * max(len(r) for r in rows) + 12)
    top = 64
    width, height = label + 24 + n * cell + 8, top + n * cell + 8
    image = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(image)
    draw.text((8, 6), "validation confusion matrix", fill="black", font=font)
    draw.text((8, 24), "rows: true class, columns: predicted class", fill="dimgray", font=font)
    left = label + 24
    peak = max(int(matrix.max()), 1) if matrix.size else 1
    for i in range(n):
        y = top + i * cell
        draw.text((8, y + cell // 2), rows[i], fill="black", font=font, anchor="lm")
        x = left + i * cell
        draw.text((x + cell // 2, top - 6), columns[i], fill="black", font=font, anchor="ms")
        for j in range(n):
            count = int(matrix[i, j])
            shade = count / peak  # white (0) to dark blue (the largest cell)
            color = tuple(int(round(a + (b - a) * shade)) for a, b in
                          zip((247, 251, 255), (8, 48, 107), strict=True))
            x = left + j * cell
            draw.rectangle((x, y, x + cell - 1, y + cell - 1), fill=color, outline="lightgray")
            if cell >= 24:
                draw.text((x + cell // 2, y + cell // 2), str(count), font=font, anchor="mm",
                          fill="white" if shade > 0.5 else "black")
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()
