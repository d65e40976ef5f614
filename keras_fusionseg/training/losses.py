"""Segmentation losses built from a model's `loss_spec`.

Labels are resized to each output's resolution by nearest neighbour (never the logits to the
label): the main logits are already at input resolution, so only auxiliary heads, which
are coarse, see a resized label, and label ids are never blended.
"""

import keras
import numpy as np
import tensorflow as tf

from keras_fusionseg.evaluation.confusion import _label_like_logits
from keras_fusionseg.models.registry import PRESENCE, SEGMENTATION

PACKAGE = "keras_fusionseg"


def _check_ohem_fraction(value):
    if not isinstance(value, int | float) or isinstance(value, bool) or not 0 < value <= 1:
        raise ValueError(f"`ohem_fraction` must be a number in (0, 1], received {value!r}.")


@keras.saving.register_keras_serializable(package=PACKAGE)
class SegmentationCrossEntropy(keras.losses.Loss):
    """Per-pixel softmax cross-entropy with an ignore label, class weights and OHEM.

    loss = sum_{p in K} w_{y_p} * CE_p / |K|, where K holds the labelled (non-ignored) pixels
    of the batch, or only the `ceil(ohem_fraction * n)` of them with the highest CE (online
    hard example mining), and w are the class weights (1 by default). Normalising by the
    pixel count rather than by the summed weights follows the DeepLab reference's
    weighted loss. The value is a mean over one replica's batch; Keras divides it by the
    number of replicas under a distribution strategy.

    Args:
        num_classes: int.
        ignore_label: int, label value without loss.
        class_weights: optional sequence of `num_classes` non-negative floats.
        ohem_fraction: float in (0, 1], share of hardest labelled pixels kept (1 = all).
        name: str.
    """

    def __init__(
        self,
        num_classes,
        ignore_label=255,
        class_weights=None,
        ohem_fraction=1.0,
        name="segmentation_cross_entropy",
        **kwargs,
    ):
        super().__init__(name=name, **kwargs)
        if not isinstance(num_classes, int) or isinstance(num_classes, bool) or num_classes < 1:
            raise ValueError(f"`num_classes` must be an integer >= 1, received {num_classes!r}.")
        _check_ohem_fraction(ohem_fraction)
        if class_weights is not None:
            class_weights = [float(w) for w in class_weights]
            if len(class_weights) != num_classes or min(class_weights) < 0:
                raise ValueError(
                    f"`class_weights` must hold {num_classes} non-negative numbers, "
                    f"received {class_weights!r}."
                )
        self.num_classes = num_classes
        self.ignore_label = int(ignore_label)
        self.class_weights = class_weights
        self.ohem_fraction = float(ohem_fraction)

    def call(self, y_true, y_pred):
        labels = tf.reshape(_label_like_logits(y_true, y_pred), [-1])
        logits = tf.reshape(tf.cast(y_pred, tf.float32), [-1, self.num_classes])
        valid = tf.not_equal(labels, self.ignore_label)
        labels = tf.boolean_mask(labels, valid)
        logits = tf.boolean_mask(logits, valid)
        pixel_loss = tf.nn.sparse_softmax_cross_entropy_with_logits(labels=labels, logits=logits)
        if self.class_weights is not None:
            pixel_loss *= tf.gather(tf.constant(self.class_weights, tf.float32), labels)
        count = tf.size(pixel_loss)
        if self.ohem_fraction < 1.0:
            kept = tf.cast(tf.math.ceil(self.ohem_fraction * tf.cast(count, tf.float32)), tf.int32)
            pixel_loss = tf.math.top_k(pixel_loss, k=kept, sorted=False).values
            count = kept
        return tf.math.divide_no_nan(tf.reduce_sum(pixel_loss), tf.cast(count, tf.float32))

    def get_config(self):
        return {
            "name": self.name,
            "reduction": self.reduction,
            "num_classes": self.num_classes,
            "ignore_label": self.ignore_label,
            "class_weights": self.class_weights,
            "ohem_fraction": self.ohem_fraction,
        }


@keras.saving.register_keras_serializable(package=PACKAGE)
class PresenceCrossEntropy(keras.losses.Loss):
    """Binary cross-entropy of per-image class-presence logits (EncNet's SE-loss).

    Context Encoding for Semantic Segmentation (Zhang et al., CVPR 2018), Sec. 3.2
    "Semantic Encoding Loss": target_c = 1 when class c occurs among the labelled pixels of
    the image; the loss is the mean binary CE over images and classes.

    Args:
        num_classes: int.
        ignore_label: int, label value that does not count as a class.
        name: str.
    """

    def __init__(self, num_classes, ignore_label=255, name="presence_cross_entropy", **kwargs):
        super().__init__(name=name, **kwargs)
        if not isinstance(num_classes, int) or isinstance(num_classes, bool) or num_classes < 1:
            raise ValueError(f"`num_classes` must be an integer >= 1, received {num_classes!r}.")
        self.num_classes = num_classes
        self.ignore_label = int(ignore_label)

    def call(self, y_true, y_pred):
        labels = tf.convert_to_tensor(y_true)
        if labels.shape.rank == 4:
            labels = labels[..., 0]
        labels = tf.cast(labels, tf.int32)
        batch = tf.shape(labels)[0]
        labels = tf.reshape(labels, [batch, -1])
        # one_hot gives all-zero rows for the ignore label (outside [0, num_classes)).
        present = tf.reduce_max(tf.one_hot(labels, self.num_classes, dtype=tf.float32), axis=1)
        logits = tf.cast(y_pred, tf.float32)
        return tf.reduce_mean(
            tf.nn.sigmoid_cross_entropy_with_logits(labels=present, logits=logits)
        )

    def get_config(self):
        return {
            "name": self.name,
            "reduction": self.reduction,
            "num_classes": self.num_classes,
            "ignore_label": self.ignore_label,
        }


def losses_from_loss_spec(
    loss_spec,
    *,
    num_classes,
    ignore_label=255,
    class_weights=None,
    ohem_fraction=1.0,
    loss_weight_overrides=None,
):
    """Keras `compile` losses and loss weights for a model's `loss_spec`.

    Args:
        loss_spec: dict output name -> (kind, weight), from `model.loss_spec`.
        num_classes, ignore_label, class_weights, ohem_fraction: see `SegmentationCrossEntropy`
            (class weights and OHEM apply to segmentation outputs only).
        loss_weight_overrides: optional dict output name -> weight replacing the model's.

    Returns:
        (loss, loss_weights): a single loss and None when the spec has only `"logits"`
        (a model built without `aux_outputs`), else two dicts keyed by output name.
    """
    overrides = dict(loss_weight_overrides or {})
    unknown = sorted(set(overrides) - set(loss_spec))
    if unknown:
        raise ValueError(
            f"`loss_weight_overrides` names outputs {unknown} that the model does not have; "
            f"its outputs are {sorted(loss_spec)}."
        )
    losses, weights = {}, {}
    for name, (kind, weight) in loss_spec.items():
        if kind == SEGMENTATION:
            losses[name] = SegmentationCrossEntropy(
                num_classes, ignore_label, class_weights, ohem_fraction, name=f"{name}_loss"
            )
        elif kind == PRESENCE:
            losses[name] = PresenceCrossEntropy(num_classes, ignore_label, name=f"{name}_loss")
        else:
            raise ValueError(
                f"Output {name!r} has loss kind {kind!r}; allowed: {[SEGMENTATION, PRESENCE]}."
            )
        weights[name] = float(overrides.get(name, weight))
    if list(losses) == ["logits"]:
        return losses["logits"], None
    return losses, weights


def class_weights_from_frequencies(pixel_counts):
    """Median-frequency class weights (SegNet): median(f) / f_c, 0 for absent classes."""
    counts = np.asarray(pixel_counts, dtype=np.float64)
    frequency = counts / max(counts.sum(), 1.0)
    median = np.median(frequency[frequency > 0])
    return np.where(frequency > 0, median / np.maximum(frequency, 1e-12), 0.0).tolist()
