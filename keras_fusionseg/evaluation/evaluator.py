"""Evaluates a model over a dataset and writes `metrics.json`, confusion CSV and PNG."""

import csv
import json
import math
import os

import keras
import numpy as np

from keras_fusionseg.evaluation import boundary, figures, inference
from keras_fusionseg.evaluation.confusion import confusion_from_labels, iou_from_confusion


def _image_and_label(element, index):
    if isinstance(element, dict):
        image, label = element.get("image"), element.get("label")
    elif isinstance(element, tuple | list) and len(element) >= 2:
        image, label = element[0], element[1]
    else:
        raise ValueError(
            f"Evaluation record {index} must be (image, label) or a dict with 'image' and "
            f"'label', received {type(element).__name__}."
        )
    image, label = np.asarray(image), np.asarray(label)
    if image.ndim == 4:
        if image.shape[0] != 1:
            raise ValueError(
                f"Evaluation record {index}: batch size must be 1, got {image.shape[0]}."
            )
        image, label = image[0], label[0]
    if label.ndim == 3:
        label = label[..., 0]
    if image.ndim != 3 or label.shape != image.shape[:2]:
        raise ValueError(
            f"Evaluation record {index}: image {image.shape} and label {label.shape} do not match "
            "as [H, W, C] and [H, W]."
        )
    return image, label


def _image_count(dataset, max_images):
    """How many images `evaluate` will read (the progress bar's total), or None if unknown."""
    try:
        count = len(dataset)  # datasets from `load_split` + `eval_pipeline` know it
    except TypeError:  # a generator, or a dataset of unknown or infinite length
        count = None
    if max_images:
        return max_images if count is None else min(count, max_images)
    return count


def evaluate(
    model,
    dataset,
    *,
    num_classes,
    ignore_label=255,
    class_names=None,
    mode="whole",
    scales=(0.5, 0.75, 1.0, 1.25, 1.5, 1.75),
    flip=True,
    crop_size=None,
    stride=None,
    trimap_widths=(),
    trimap_band="boundaries",
    max_images=0,
    verbose=1,
):
    """Streams images through `model` and accumulates confusion matrices.

    Args:
        model: segmentation `keras.Model` (logits, or a dict with `"logits"`).
        dataset: iterable of (image, label) or {"image", "label"} at original resolution,
            unbatched or batch size 1.
        num_classes, ignore_label: int.
        class_names: optional list of names (default "class_<i>").
        mode: `"whole"`, `"multiscale"` (uses `scales`, `flip`) or `"sliding"` (uses
            `crop_size`, `stride`): the size policy of `inference.SegmentationPipeline`, the
            inference path of every shipped form.
        trimap_widths: band widths (pixels) for the boundary (trimap) evaluation; empty to skip.
        trimap_band: `"boundaries"` (bands around label boundaries) or `"void"` (dilated void
            annotations only, the DeepLabv3+ protocol); see `evaluation.boundary`.
        max_images: int, stop after this many images (0 = all).
        verbose: 0 or 1 (progress bar).

    Returns:
        dict with `mean_iou`, `pixel_accuracy`, `per_class_iou` (name -> IoU or None when the
        class is absent), `num_images`, `eval_mode`, `confusion` (ndarray) and, with
        `trimap_widths`, `trimap_band` and `trimap` (width -> {mean_iou, pixel_accuracy}).
    """
    if mode not in inference.EVAL_MODES:
        raise ValueError(f"`mode` must be one of {list(inference.EVAL_MODES)}, received {mode!r}.")
    if mode == "sliding" and crop_size is None:
        raise ValueError("`mode='sliding'` needs `crop_size` (e.g. the training crop).")
    class_names = list(class_names or [f"class_{i}" for i in range(num_classes)])
    if len(class_names) != num_classes:
        raise ValueError(
            f"`class_names` has {len(class_names)} names for num_classes={num_classes}."
        )
    if trimap_widths and trimap_band not in boundary.BAND_SOURCES:
        raise ValueError(
            f"`trimap_band` must be one of {list(boundary.BAND_SOURCES)}, received {trimap_band!r}."
        )
    # "whole": the model's default single pass (the image as it is, or resized for a model of
    # fixed size), as the exported SavedModel and TFLite runner by default.
    pipeline = inference.SegmentationPipeline(
        model,
        size_policy=None if mode == "whole" else mode,
        scales=scales,
        flip=flip,
        crop_size=crop_size,
        stride=stride,
    )
    confusion = np.zeros((num_classes, num_classes), np.float64)
    bands = {int(w): np.zeros_like(confusion) for w in trimap_widths}
    total = _image_count(dataset, max_images)
    progress = keras.utils.Progbar(total, verbose=verbose, unit_name="image")
    count = 0
    for index, element in enumerate(dataset):
        if max_images and count >= max_images:
            break
        image, label = _image_and_label(element, index)
        prediction = pipeline.class_ids(image)  # the path of every shipped form
        confusion += confusion_from_labels(label, prediction, num_classes, ignore_label).numpy()
        if bands:
            for width, band in boundary.band_confusions(
                label, prediction, bands, num_classes, ignore_label, band_source=trimap_band
            ).items():
                bands[width] += band
        count += 1
        progress.update(count)
    if count == 0:
        raise ValueError("The evaluation dataset is empty.")
    scores = iou_from_confusion(confusion)
    eval_mode = {"mode": mode}
    if mode == "multiscale":
        eval_mode.update(scales=[float(s) for s in scales], flip=bool(flip))
    if mode == "sliding":
        eval_mode.update(
            crop_size=[int(v) for v in crop_size],
            stride=None if stride is None else [int(v) for v in stride],
        )
    results = {
        "mean_iou": scores["mean_iou"],
        "pixel_accuracy": scores["pixel_accuracy"],
        "per_class_iou": {
            name: (None if math.isnan(v) else float(v))
            for name, v in zip(class_names, scores["per_class_iou"], strict=True)
        },
        "num_images": count,
        "eval_mode": eval_mode,
        "class_names": class_names,
        "confusion": confusion,
    }
    if bands:
        results["trimap_band"] = trimap_band
        results["trimap"] = {}
        for width, band in bands.items():
            band_scores = iou_from_confusion(band)
            results["trimap"][str(width)] = {
                "mean_iou": band_scores["mean_iou"],
                "pixel_accuracy": band_scores["pixel_accuracy"],
            }
    return results


def write_reports(results, directory, extra=None):
    """Writes `metrics.json`, `confusion_matrix.csv` and `confusion_matrix.png` to `directory`.

    The PNG is a labelled figure (class names, row shares, colour bar) when matplotlib is
    installed (the `plot` extra), else a bare heat map (`figures.write_confusion_matrix_png`).

    Args:
        results: dict from `evaluate`.
        directory: output folder (created).
        extra: optional dict merged into `metrics.json` (e.g. the checkpoint used).
    """
    os.makedirs(directory, exist_ok=True)
    metrics = {k: v for k, v in results.items() if k != "confusion"}
    metrics.update(extra or {})
    with open(os.path.join(directory, "metrics.json"), "w") as f:
        json.dump(metrics, f, indent=2, allow_nan=True)
    names = results["class_names"]
    confusion = results["confusion"]
    with open(os.path.join(directory, "confusion_matrix.csv"), "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["true \\ predicted", *names])
        for name, row in zip(names, confusion, strict=True):
            writer.writerow([name, *(int(v) for v in row)])
    figures.write_confusion_matrix_png(
        confusion, names, os.path.join(directory, "confusion_matrix.png")
    )
