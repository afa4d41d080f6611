"""Artifact rendering that needs no PyTorch: it runs in the MLflow writer process."""

from __future__ import annotations

import io

import numpy as np

# The classification report is computed here from the confusion matrix
# (objectives.metrics.confusion_matrix), not with scikit-learn's classification_report: that
# validates and re-encodes its inputs on every call (11 ms a trial on digits), and the report's
# numbers all follow from the matrix. The output is scikit-learn's, character for character
# (the tests compare).


def confusion_csv(matrix: np.ndarray, class_names: tuple[str, ...]) -> str:
    header = ",".join(["true\\predicted", *class_names])
    rows = [",".join([name, *map(str, row)])
            for name, row in zip(class_names, matrix, strict=True)]
    return "\n".join([header, *rows]) + "\n"


def _ratio(numerator: np.ndarray, denominator: np.ndarray) -> np.ndarray:
    """numerator / denominator, 0 where the denominator is 0 (zero_division=0)."""
    out = np.zeros(np.shape(numerator), dtype=np.float64)
    np.divide(numerator, denominator, out=out, where=np.asarray(denominator) > 0)
    return out


def report_text(matrix: np.ndarray, class_names: tuple[str, ...], digits: int = 4) -> str:
    """Precision, recall, F1 and support per class, then accuracy and the macro and weighted
    averages, from a confusion matrix: `classification_report(..., zero_division=0)`'s text."""
    tp = np.diag(matrix).astype(np.float64)
    support = matrix.sum(axis=1)
    predicted = matrix.sum(axis=0)
    scores = np.stack([_ratio(tp, predicted), _ratio(tp, support),
                       _ratio(2 * tp, predicted + support)])  # precision, recall, F1
    total = int(support.sum())
    width = max(len("weighted avg"), digits, *(len(c) for c in class_names))
    row = "{:>{w}s} " + " {:>9.{d}f}" * 3 + " {:>9}"
    lines = [("{:>{w}s} " + " {:>9}" * 4).format(
        "", "precision", "recall", "f1-score", "support", w=width), ""]
    lines += [row.format(name, *scores[:, i], int(support[i]), w=width, d=digits)
              for i, name in enumerate(class_names)]
    lines += ["", ("{:>{w}s} " + " {:>9}" * 2 + " {:>9.{d}f} {:>9}").format(
        "accuracy", "", "", tp.sum() / total if total else 0.0, total, w=width, d=digits)]
    weights = support / total if total else np.zeros(len(support))
    lines.append(row.format("macro avg", *scores.mean(axis=1), total, w=width, d=digits))
    lines.append(row.format("weighted avg", *(scores @ weights), total, w=width, d=digits))
    return "\n".join(lines) + "\n"


def confusion_png(matrix: np.ndarray, class_names: tuple[str, ...]) -> bytes:
    """The confusion matrix as a PNG heat map with counts: rows true, columns predicted.

    Drawn with Pillow rather than matplotlib: a matplotlib figure costs about 175 ms of CPU per
    trial here, which on a 2-core machine is most of the search's overhead; this costs about
    14 ms (10 classes, 2026-12-01).
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
