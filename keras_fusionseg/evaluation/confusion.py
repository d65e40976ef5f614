"""Streaming confusion matrix: mean IoU, per-class IoU and pixel accuracy.

`keras.metrics.MeanIoU` is not used because it cannot skip an ignore label (void pixels
would be counted as errors or crash the update) and it reports no per-class IoU.
"""

import keras
import numpy as np
import tensorflow as tf

PACKAGE = "keras_fusionseg"


def iou_from_confusion(confusion):
    """Per-class IoU, mean IoU and pixel accuracy from a confusion matrix.

    `confusion[i, j]` counts pixels of true class i predicted as class j. The IoU of class c
    is TP / (TP + FP + FN); a class absent from both labels and predictions has IoU NaN and
    is left out of the mean (the usual benchmark convention).

    Returns:
        dict with `per_class_iou` (float array), `mean_iou` and `pixel_accuracy` (floats).
    """
    confusion = np.asarray(confusion, dtype=np.float64)
    true_positive = np.diag(confusion)
    union = confusion.sum(axis=0) + confusion.sum(axis=1) - true_positive
    with np.errstate(invalid="ignore", divide="ignore"):
        per_class = np.where(union > 0, true_positive / union, np.nan)
    total = confusion.sum()
    valid = ~np.isnan(per_class)
    return {
        "per_class_iou": per_class,
        "mean_iou": float(per_class[valid].mean()) if valid.any() else float("nan"),
        "pixel_accuracy": float(true_positive.sum() / total) if total > 0 else float("nan"),
    }


def confusion_from_labels(labels, predictions, num_classes, ignore_label=255):
    """Confusion matrix (float64, [num_classes, num_classes]) of integer label/prediction maps.

    Pixels whose label equals `ignore_label` are skipped; any other label outside
    [0, num_classes) raises an error naming the bad value.
    """
    labels = tf.reshape(tf.cast(labels, tf.int32), [-1])
    predictions = tf.reshape(tf.cast(predictions, tf.int32), [-1])
    keep = tf.not_equal(labels, ignore_label)
    labels = tf.boolean_mask(labels, keep)
    predictions = tf.boolean_mask(predictions, keep)
    checks = [
        tf.debugging.assert_less(
            labels,
            num_classes,
            message=f"label id >= num_classes ({num_classes}) and != ignore_label ({ignore_label})",
        ),
        tf.debugging.assert_non_negative(labels, message="negative label id"),
    ]
    with tf.control_dependencies(checks):
        return tf.math.confusion_matrix(
            labels, predictions, num_classes=num_classes, dtype=tf.float64
        )


def _label_like_logits(y_true, y_pred):
    """Integer label map [B, h, w] at the logits' resolution (nearest resize when needed)."""
    y_true = tf.convert_to_tensor(y_true)
    if y_true.shape.rank == 4:
        y_true = y_true[..., 0]
    y_true = tf.cast(y_true, tf.int32)
    logits_hw = tf.shape(y_pred)[1:3]
    if y_true.shape[1:3] != y_pred.shape[1:3] or None in y_pred.shape[1:3]:
        y_true = tf.cond(
            tf.reduce_all(tf.equal(tf.shape(y_true)[1:3], logits_hw)),
            lambda: y_true,
            lambda: tf.image.resize(y_true[..., None], logits_hw, method="nearest")[..., 0],
        )
    return y_true


@keras.saving.register_keras_serializable(package=PACKAGE)
class ConfusionMatrixMetric(keras.metrics.Metric):
    """Streaming confusion matrix over logits that skips the ignore label; result: mean IoU.

    Accumulates `confusion[true, predicted]` over every update (float64, so counts stay exact
    beyond 2**24 pixels), synchronised across replicas by summation. Predictions are the
    argmax of `y_pred` (logits or probabilities, [B, h, w, C]); labels ([B, H, W] or
    [B, H, W, 1]) are resized by nearest neighbour to the logits' size when they differ.

    Args:
        num_classes: int, number of classes C.
        ignore_label: int, label value that is not counted (void).
        result_kind: str, what `result()` returns: `"mean_iou"` or `"pixel_accuracy"`.
        name: str, metric name (also the key in `fit` logs).
    """

    RESULT_KINDS = ("mean_iou", "pixel_accuracy")

    def __init__(self, num_classes, ignore_label=255, result_kind="mean_iou", name=None, **kwargs):
        super().__init__(name=name or result_kind, **kwargs)
        if not isinstance(num_classes, int) or isinstance(num_classes, bool) or num_classes < 1:
            raise ValueError(f"`num_classes` must be an integer >= 1, received {num_classes!r}.")
        if result_kind not in self.RESULT_KINDS:
            raise ValueError(
                f"`result_kind` must be one of {list(self.RESULT_KINDS)}, received {result_kind!r}."
            )
        self.num_classes = num_classes
        self.ignore_label = int(ignore_label)
        self.result_kind = result_kind
        self.confusion = self.add_variable(
            shape=(num_classes, num_classes),
            initializer="zeros",
            dtype="float64",
            aggregation="sum",
            name="confusion",
        )

    def update_state(self, y_true, y_pred, sample_weight=None):
        if sample_weight is not None:
            raise ValueError("`ConfusionMatrixMetric` does not support `sample_weight`.")
        labels = _label_like_logits(y_true, y_pred)
        predictions = tf.argmax(y_pred, axis=-1, output_type=tf.int32)
        self.confusion.assign_add(
            confusion_from_labels(labels, predictions, self.num_classes, self.ignore_label)
        )

    def _scores(self):
        confusion = tf.convert_to_tensor(self.confusion)
        true_positive = tf.linalg.diag_part(confusion)
        union = tf.reduce_sum(confusion, 0) + tf.reduce_sum(confusion, 1) - true_positive
        present = union > 0
        iou = tf.math.divide_no_nan(true_positive, union)
        mean_iou = tf.math.divide_no_nan(
            tf.reduce_sum(tf.where(present, iou, 0.0)),
            tf.reduce_sum(tf.cast(present, tf.float64)),
        )
        accuracy = tf.math.divide_no_nan(tf.reduce_sum(true_positive), tf.reduce_sum(confusion))
        return mean_iou, accuracy

    def result(self):
        mean_iou, accuracy = self._scores()
        value = mean_iou if self.result_kind == "mean_iou" else accuracy
        return tf.cast(value, tf.float32)

    def reset_state(self):
        self.confusion.assign(tf.zeros_like(self.confusion))

    def get_config(self):
        return {
            "name": self.name,
            "dtype": self.dtype,
            "num_classes": self.num_classes,
            "ignore_label": self.ignore_label,
            "result_kind": self.result_kind,
        }
