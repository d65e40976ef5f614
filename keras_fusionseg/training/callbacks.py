"""Training callbacks: stop on NaN, stop at a step budget, TensorBoard prediction overlays."""

import math

import keras
import numpy as np
import tensorflow as tf
from tensorflow.core.framework import summary_pb2


def _metadata(plugin_name):
    metadata = summary_pb2.SummaryMetadata()
    metadata.plugin_data.plugin_name = plugin_name
    return metadata


# `tf.summary.scalar/image` need the `tensorboard` package, which is not a dependency;
# `tf.summary.write` with the plugin name writes the same records with core TF only.
def write_scalar(name, value, step):
    tf.summary.write(
        name, tf.constant(float(value), tf.float32), step, metadata=_metadata("scalars")
    )


def write_images(name, images, step):
    """Writes uint8 [N, H, W, 3] images as one TensorBoard image summary."""
    images = np.asarray(images, np.uint8)
    height, width = images.shape[1:3]
    encoded = [tf.io.encode_png(image) for image in images]
    tensor = tf.stack([tf.as_string(width), tf.as_string(height), *encoded])
    tf.summary.write(name, tensor, step, metadata=_metadata("images"))


class TensorBoardLogger(keras.callbacks.Callback):
    """Epoch summaries for TensorBoard: losses and metrics (train/ and validation/) and the LR.

    Args:
        logdir: str, TensorBoard folder.
    """

    def __init__(self, logdir):
        super().__init__()
        self.writers = {
            "train": tf.summary.create_file_writer(f"{logdir}/train"),
            "validation": tf.summary.create_file_writer(f"{logdir}/validation"),
        }

    def on_epoch_end(self, epoch, logs=None):
        logs = dict(logs or {})
        optimizer = self.model.optimizer
        logs["learning_rate"] = float(np.asarray(optimizer.learning_rate))
        step = int(optimizer.iterations.numpy())
        for split, writer in self.writers.items():
            with writer.as_default():
                for key, value in logs.items():
                    if key.startswith("val_") == (split == "validation"):
                        write_scalar(f"epoch_{key.removeprefix('val_')}", value, step)
            writer.flush()


class StopOnNaN(keras.callbacks.Callback):
    """Raises `FloatingPointError` naming the epoch and step as soon as the loss is not finite.

    Raising (rather than `TerminateOnNaN`'s quiet stop) keeps the run from reporting
    metrics or saving a checkpoint of a diverged model; place it before `BackupAndRestore`
    so the last backup holds finite weights.
    """

    def __init__(self):
        super().__init__()
        self._epoch = 0

    def on_epoch_begin(self, epoch, logs=None):
        self._epoch = epoch

    def on_train_batch_end(self, batch, logs=None):
        loss = (logs or {}).get("loss")
        if loss is not None and not math.isfinite(float(loss)):
            step = int(self.model.optimizer.iterations.numpy())
            raise FloatingPointError(
                f"Training loss became {float(loss)} at epoch {self._epoch + 1}, batch {batch + 1} "
                f"(optimizer step {step}). Stopping: lower train.learning_rate, add "
                "train.warmup_steps, or check the labels (values must be < num_classes or the "
                "ignore label)."
            )


class ReportStartStep(keras.callbacks.Callback):
    """Records (and prints) the optimizer step at which `fit` starts, after any restore."""

    def __init__(self):
        super().__init__()
        self.start_step = None

    def on_train_begin(self, logs=None):
        self.start_step = int(self.model.optimizer.iterations.numpy())
        if self.start_step:
            print(f"Restored optimizer step {self.start_step}", flush=True)


class StopAtStep(keras.callbacks.Callback):
    """Stops training once the optimizer has taken `max_steps` steps (counted across resumes)."""

    def __init__(self, max_steps):
        super().__init__()
        self.max_steps = int(max_steps)

    def on_train_batch_end(self, batch, logs=None):
        if int(self.model.optimizer.iterations.numpy()) >= self.max_steps:
            self.model.stop_training = True


def colorize(label, palette, ignore_label=255):
    """uint8 RGB [H, W, 3] of a label map; ignored pixels are black."""
    label = np.asarray(label)
    palette = np.asarray(palette, np.uint8)
    safe = np.where(label == ignore_label, 0, label).clip(0, len(palette) - 1)
    colours = palette[safe]
    colours[label == ignore_label] = 0
    return colours


class PredictionOverlays(keras.callbacks.Callback):
    """Writes [image | prediction overlay | label overlay] of a few images to TensorBoard.

    Args:
        images: float [N, H, W, C] raw pixels (same size), e.g. the first validation images.
        labels: int [N, H, W].
        palette: uint8 [num_classes, 3].
        logdir: TensorBoard folder (a `validation_overlays` writer is created inside).
        ignore_label: int.
        alpha: float, weight of the class colours in the overlay.
    """

    def __init__(self, images, labels, palette, logdir, ignore_label=255, alpha=0.5):
        super().__init__()
        self.images = np.asarray(images, np.float32)
        self.labels = np.asarray(labels)
        self.palette = np.asarray(palette, np.uint8)
        self.ignore_label = ignore_label
        self.alpha = alpha
        self.writer = tf.summary.create_file_writer(f"{logdir}/validation_overlays")

    def overlays(self):
        logits = self.model(self.images, training=False)
        if isinstance(logits, dict):
            logits = logits["logits"]
        predictions = np.argmax(np.asarray(logits), axis=-1)
        rows = []
        for image, prediction, label in zip(self.images, predictions, self.labels, strict=True):
            rgb = image if image.shape[-1] == 3 else np.repeat(image[..., :1], 3, axis=-1)
            colours = [colorize(m, self.palette, self.ignore_label) for m in (prediction, label)]
            blends = [(1 - self.alpha) * rgb + self.alpha * c for c in colours]
            rows.append(np.concatenate([rgb, *blends], axis=1))
        return np.clip(np.stack(rows), 0, 255).astype(np.uint8)

    def on_epoch_end(self, epoch, logs=None):
        with self.writer.as_default():
            write_images("image | prediction | label", self.overlays(), epoch + 1)
        self.writer.flush()
