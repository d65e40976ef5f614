"""Figures for people: the confusion matrix with class names and shares, training curves.

They are drawn with matplotlib (the optional `plot` extra: `pip install keras_fusionseg[plot]`)
through its Agg canvas only (no pyplot, no window, no global state), so they can be written
from training callbacks and scripts on machines without a display. Without matplotlib the
writers fall back to a plain picture (the confusion matrix as a bare heat map) or skip the
figure, each with one log line that names the extra.
"""

import csv
import logging
import math
import os

import numpy as np
from PIL import Image

_LOG = logging.getLogger(__name__)
_MISSING = "matplotlib is not installed (pip install 'keras_fusionseg[plot]')"


def matplotlib_available():
    """Whether matplotlib can be imported."""
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        return False
    return True


def _new_figure(width, height):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=(width, height), dpi=100, layout="constrained")
    FigureCanvasAgg(figure)
    return figure


def save_figure(figure, path):
    """Writes a matplotlib figure as an RGB PNG (through a temporary name, then renamed)."""
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    figure.set_facecolor("white")
    figure.canvas.draw()
    pixels = np.asarray(figure.canvas.buffer_rgba())[..., :3]  # opaque: drop alpha
    temporary = os.path.join(folder, f".{os.path.basename(path)}.incomplete-{os.getpid()}.png")
    try:
        Image.fromarray(pixels).save(temporary, format="PNG")
        os.replace(temporary, path)
    finally:
        if os.path.exists(temporary):
            os.remove(temporary)


def row_shares(confusion):
    """Row-normalised confusion matrix: row i is where the pixels of true class i went."""
    confusion = np.asarray(confusion, np.float64)
    rows = confusion.sum(axis=1, keepdims=True)
    return np.divide(confusion, rows, out=np.zeros_like(confusion), where=rows > 0)


def confusion_matrix_figure(confusion, class_names, title=None):
    """A matplotlib figure of the row-normalised confusion matrix.

    Rows are true classes, columns predicted ones; each cell shows its share of the row's
    pixels (as a colour and, up to 30 classes, as a number; cells without pixels stay blank), each row label its pixel count.

    Args:
        confusion: (C, C) counts, rows = true class, columns = predicted class.
        class_names: C names.
        title: optional str above the matrix (default: mean of the diagonal, i.e. the mean
            per-class accuracy over classes present).
    """
    confusion = np.asarray(confusion, np.float64)
    count = len(class_names)
    if confusion.shape != (count, count):
        raise ValueError(
            f"`confusion` must have shape ({count}, {count}) for {count} class names, "
            f"received {confusion.shape}."
        )
    shares = row_shares(confusion)
    present = confusion.sum(axis=1) > 0
    if title is None:
        accuracy = float(np.mean(np.diag(shares)[present])) if present.any() else float("nan")
        title = f"Confusion matrix (rows sum to 1; mean class accuracy {accuracy:.3f})"
    side = max(5.0, 0.45 * count + 3.0)
    figure = _new_figure(side + 1.2, side)
    axes = figure.add_subplot()
    image = axes.imshow(shares, cmap="Blues", vmin=0.0, vmax=1.0, interpolation="nearest")
    figure.colorbar(image, ax=axes, shrink=0.8, label="share of the true class")
    rows = [
        f"{name} ({_short_count(n)})"
        for name, n in zip(class_names, confusion.sum(axis=1), strict=True)
    ]
    axes.set_xticks(range(count), labels=list(class_names), rotation=45, ha="right")
    axes.set_yticks(range(count), labels=rows)
    axes.set_xlabel("predicted class")
    axes.set_ylabel("true class (pixels)")
    axes.set_title(title, fontsize="medium")
    if count <= 30:
        size = "small" if count <= 12 else "x-small"
        for i in range(count):
            for j in range(count):
                if confusion[i, j] == 0:  # blank, not "0.00": the eye finds the errors
                    continue
                share = shares[i, j]
                axes.text(
                    j,
                    i,
                    f"{share:.2f}",
                    ha="center",
                    va="center",
                    fontsize=size,
                    color="white" if share > 0.5 else "black",
                )
    return figure


def _short_count(value):
    value = float(value)
    for unit, scale in (("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if value >= scale:
            return f"{value / scale:.1f}{unit}"
    return f"{int(value)}"


def confusion_heat_map(confusion, cell=16):
    """uint8 RGB heat map [C*cell, C*cell, 3] of the row-normalised confusion matrix.

    The picture written when matplotlib is missing: row i (true class i) shows where its
    pixels went, white = 0, dark blue = 1; no labels.
    """
    share = row_shares(confusion)
    white, blue = np.array([255.0, 255.0, 255.0]), np.array([8.0, 48.0, 107.0])
    colours = white + share[..., None] * (blue - white)
    image = np.repeat(np.repeat(colours, cell, axis=0), cell, axis=1)
    image[::cell, :, :] = 200.0  # grid lines
    image[:, ::cell, :] = 200.0
    return image.astype(np.uint8)


def write_confusion_matrix_png(confusion, class_names, path):
    """Writes the confusion matrix figure to `path`; the bare heat map without matplotlib.

    Returns:
        True if the labelled matplotlib figure was written, False for the fallback.
    """
    if matplotlib_available():
        save_figure(confusion_matrix_figure(confusion, class_names), path)
        return True
    _LOG.warning("%s: %s is an unlabelled heat map.", _MISSING, path)
    Image.fromarray(confusion_heat_map(confusion)).save(path)
    return False


# ----------------------------------------------------------------------------------------
# Training curves: one CSV row per epoch (optimizer step, training loss, validation mIoU when
# that epoch was validated), the PNG redrawn from the CSV.

CURVE_FIELDS = ("epoch", "step", "loss", "val_mean_iou")


def read_curve_rows(path):
    """Rows of a training-curves CSV as dicts of floats (NaN where a value is missing)."""
    if not os.path.exists(path):
        return []
    with open(path, newline="") as f:
        return [{key: _float(row.get(key)) for key in CURVE_FIELDS} for row in csv.DictReader(f)]


def write_curve_rows(path, rows):
    """Writes training-curve rows (dicts with `CURVE_FIELDS`) as CSV, through a rename."""
    temporary = f"{path}.incomplete-{os.getpid()}"
    with open(temporary, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=CURVE_FIELDS)
        writer.writeheader()
        for row in rows:
            writer.writerow({k: "" if _missing(row.get(k)) else row[k] for k in CURVE_FIELDS})
    os.replace(temporary, path)


def _float(value):
    try:
        return float(value)
    except (TypeError, ValueError):
        return float("nan")


def _missing(value):
    return value is None or (isinstance(value, float) and math.isnan(value))


def training_curves_figure(rows):
    """A figure with the training loss and the validation mIoU against the optimizer step.

    Args:
        rows: dicts with "step", "loss" and "val_mean_iou" (NaN or missing where absent).
    """
    steps = np.array([_float(r.get("step")) for r in rows])
    loss = np.array([_float(r.get("loss")) for r in rows])
    miou = np.array([_float(r.get("val_mean_iou")) for r in rows])
    figure = _new_figure(9.0, 3.6)
    loss_axes, miou_axes = figure.subplots(1, 2)
    keep = np.isfinite(loss)
    loss_axes.plot(steps[keep], loss[keep], marker=".", color="tab:red", label="training loss")
    loss_axes.set_xlabel("optimizer step")
    loss_axes.set_ylabel("loss")
    loss_axes.set_title("training loss (epoch mean)", fontsize="medium")
    loss_axes.grid(alpha=0.3)
    keep = np.isfinite(miou)
    miou_axes.plot(steps[keep], miou[keep], marker="o", color="tab:blue", label="val mIoU")
    if keep.any():
        best = int(np.nanargmax(np.where(keep, miou, np.nan)))
        miou_axes.annotate(
            f"best {miou[best]:.3f}",
            (steps[best], miou[best]),
            textcoords="offset points",
            xytext=(0, 8),
            ha="center",
            fontsize="small",
        )
    miou_axes.set_xlabel("optimizer step")
    miou_axes.set_ylabel("mean IoU")
    miou_axes.set_ylim(0.0, 1.0)
    miou_axes.set_title("validation mIoU (per validation)", fontsize="medium")
    miou_axes.grid(alpha=0.3)
    return figure


def write_training_curves_png(rows, path):
    """Writes the training-curves figure; returns False (and writes nothing) without matplotlib."""
    if not matplotlib_available():
        return False
    save_figure(training_curves_figure(rows), path)
    return True
