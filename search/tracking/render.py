"""Artifact rendering that needs no PyTorch: it runs in the MLflow writer process."""

from __future__ import annotations

import io

import numpy as np
from sklearn.metrics import classification_report, confusion_matrix


def confusion(y_true: np.ndarray, y_pred: np.ndarray, num_classes: int) -> np.ndarray:
    return confusion_matrix(y_true, y_pred, labels=np.arange(num_classes))


def confusion_csv(matrix: np.ndarray, class_names: tuple[str, ...]) -> str:
    header = ",".join(["true\\predicted", *class_names])
    rows = [",".join([name, *map(str, row)])
            for name, row in zip(class_names, matrix, strict=True)]
    return "\n".join([header, *rows]) + "\n"


def report_text(y_true: np.ndarray, y_pred: np.ndarray, class_names: tuple[str, ...]) -> str:
    return str(
        classification_report(
            y_true, y_pred, labels=np.arange(len(class_names)), target_names=list(class_names),
            digits=4, zero_division=0,
        )
    )


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
