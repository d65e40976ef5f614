"""Training callbacks: stop on NaN, stop at a step budget, TensorBoard prediction overlays,
training curves (CSV and PNG), and checkpoints and backups that a kill cannot leave half-written."""

import json
import math
import os

import keras
import numpy as np
import tensorflow as tf
from PIL import Image
from tensorflow.core.framework import summary_pb2

from keras_fusionseg.evaluation import figures
from keras_fusionseg.export.visualize import overlay


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


class PredictionOverlays(keras.callbacks.Callback):
    """Writes [image | prediction overlay | label overlay] of a few images to TensorBoard.

    Ignored label pixels and black ("background") classes are drawn transparent
    (`export.visualize.overlay`). With `png_path`, the same rows, stacked, are also kept as
    one PNG (rewritten after every epoch), to look at without TensorBoard.

    Args:
        images: float [N, H, W, C] raw pixels (same size), e.g. the first validation images.
        labels: int [N, H, W].
        palette: uint8 [num_classes, 3].
        logdir: TensorBoard folder (a `validation_overlays` writer is created inside).
        ignore_label: int.
        alpha: float, weight of the class colours in the overlay.
        png_path: optional path of the PNG.
    """

    def __init__(self, images, labels, palette, logdir, ignore_label=255, alpha=0.5, png_path=None):
        super().__init__()
        self.png_path = png_path
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
            rgb = np.clip(np.round(rgb), 0, 255).astype(np.uint8)
            label = np.where(label == self.ignore_label, -1, label)  # void: outside the palette
            blends = [overlay(rgb, m, self.palette, self.alpha) for m in (prediction, label)]
            rows.append(np.concatenate([rgb, *blends], axis=1))
        return np.stack(rows)

    def on_epoch_end(self, epoch, logs=None):
        rows = self.overlays()
        with self.writer.as_default():
            write_images("image | prediction | label", rows, epoch + 1)
        self.writer.flush()
        if self.png_path:
            temporary = _temporary_path(self.png_path)
            Image.fromarray(np.concatenate(list(rows), axis=0)).save(temporary, format="PNG")
            os.replace(temporary, self.png_path)


class TrainingCurves(keras.callbacks.Callback):
    """Keeps `training_curves.csv` and draws `training_curves.png` in a run's folder.

    One row per epoch: the optimizer step, the training loss and, on validated epochs, the
    validation mIoU (`val_mean_iou`, or `val_logits_mean_iou` for models with auxiliary
    outputs). The PNG (`evaluation.figures.training_curves_figure`, needs matplotlib) is
    redrawn after every validation, so it can be watched during training. Rows of a resumed
    run past the restored step are dropped before new ones are added.

    Args:
        directory: str, the run's folder (where `metrics.json` goes).
    """

    def __init__(self, directory):
        super().__init__()
        self.csv_path = os.path.join(directory, "training_curves.csv")
        self.png_path = os.path.join(directory, "training_curves.png")
        self.rows = []
        self._warned = False

    def on_train_begin(self, logs=None):
        step = int(self.model.optimizer.iterations.numpy())
        self.rows = [r for r in figures.read_curve_rows(self.csv_path) if r["step"] <= step]

    def on_epoch_end(self, epoch, logs=None):
        logs = logs or {}
        miou = next(
            (v for k, v in logs.items() if k in ("val_mean_iou", "val_logits_mean_iou")), None
        )
        self.rows.append(
            {
                "epoch": epoch + 1,
                "step": int(self.model.optimizer.iterations.numpy()),
                "loss": float(logs.get("loss", math.nan)),
                "val_mean_iou": math.nan if miou is None else float(miou),
            }
        )
        figures.write_curve_rows(self.csv_path, self.rows)
        if miou is not None or not os.path.exists(self.png_path):
            self.draw()

    def on_train_end(self, logs=None):
        if self.rows:
            self.draw()

    def draw(self):
        if not figures.write_training_curves_png(self.rows, self.png_path) and not self._warned:
            self._warned = True
            print(
                "matplotlib is not installed (pip install 'keras_fusionseg[plot]'): no "
                f"{self.png_path}; the curves are in {self.csv_path}.",
                flush=True,
            )


# ----------------------------------------------------------------------------------------
# Checkpoints and backups: written under a temporary name, then renamed (a rename is atomic
# on one file system), so a run killed while saving leaves the previous file intact.


def _temporary_path(path):
    """A sibling of `path` with the same suffix (Keras picks the format from it)."""
    folder, base = os.path.split(path)
    for suffix in (".weights.h5", ".keras", ".json", ".png"):
        if base.endswith(suffix):
            stem = base[: -len(suffix)]
            break
    else:
        stem, suffix = base, ""
    return os.path.join(folder, f"{stem}.incomplete-{os.getpid()}{suffix}")


def save_model_atomically(model, path, weights_only=False):
    """`model.save(path)` (or `save_weights`) through a temporary file renamed at the end."""
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    temporary = _temporary_path(path)
    try:
        if weights_only:
            model.save_weights(temporary, overwrite=True)
        else:
            model.save(temporary, overwrite=True)
        os.replace(temporary, path)
    finally:
        if os.path.exists(temporary):
            os.remove(temporary)


def _write_json_atomically(path, value):
    temporary = _temporary_path(path)
    with open(temporary, "w") as handle:
        json.dump(value, handle)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(temporary, path)


class AtomicModelCheckpoint(keras.callbacks.ModelCheckpoint):
    """`ModelCheckpoint` whose file is written under a temporary name, then renamed."""

    def _save_model(self, epoch, batch, logs):
        filepath = self._get_file_path(epoch, batch, logs)
        if self._should_save_model(epoch, batch, logs, filepath):
            save_model_atomically(self.model, filepath, weights_only=self.save_weights_only)
            if self.verbose > 0:
                print(f"\nEpoch {epoch + 1}: saved {filepath}", flush=True)


PREVIOUS_RECORD = "previous_training_metadata.json"


def read_backup_metadata(backup_dir):
    """The newest readable backup record `{"epoch", "batch", ...}` in `backup_dir`, or None.

    A damaged record (a run killed while writing it) is skipped for the previous one.
    """
    for name in ("training_metadata.json", PREVIOUS_RECORD):
        record = _read_record(os.path.join(backup_dir, name))
        if isinstance(record, dict):
            return record
    return None


def _read_record(path):
    """The backup record at `path`, None if absent, or a str saying why it is unreadable."""
    if not os.path.exists(path):
        return None
    try:
        with open(path) as handle:
            record = json.load(handle)
        if not isinstance(record, dict) or not all(
            isinstance(record.get(key), int) for key in ("epoch", "batch")
        ):
            raise ValueError(f"expected integer 'epoch' and 'batch', found {record!r}")
    except (OSError, ValueError) as error:
        return f"{path}: unreadable ({error})"
    return record


class SafeBackupAndRestore(keras.callbacks.BackupAndRestore):
    """`BackupAndRestore` that survives a kill while it writes, and says what it restored.

    Saving: weights and record (epoch, batch, optimizer step) are written completely under
    temporary names; only then is the current pair renamed to `previous` and the new pair
    renamed into place. Restoring: each weights file (newest first) is loaded and paired with
    the record of the same optimizer step, so a damaged file or a pair split by a kill falls
    back to the previous backup; when no pair is usable, the error names every file and what
    is wrong with it (delete the backup folder to start the run again).

    Args:
        backup_dir: str, folder of the backup.
        save_freq: "epoch" or an int number of batches.
    """

    def __init__(self, backup_dir, save_freq="epoch"):
        super().__init__(backup_dir, save_freq=save_freq, double_checkpoint=True)
        # Keras names the previous weights `latest.weights.h5.bkp`, which `load_weights`
        # refuses (it picks the format from the suffix): keep the suffix.
        self._prev_weights_path = os.path.join(backup_dir, "previous.weights.h5")
        self._prev_training_metadata_path = os.path.join(backup_dir, PREVIOUS_RECORD)
        self.restored_from = None

    def _save_model(self):
        os.makedirs(self.backup_dir, exist_ok=True)
        step = int(self.model.optimizer.iterations.numpy())
        record = {"epoch": self._current_epoch, "batch": self._last_batch_seen, "step": step}
        temporary = _temporary_path(self._weights_path)
        try:
            self.model.save_weights(temporary, overwrite=True)
            for current, previous in (
                (self._weights_path, self._prev_weights_path),
                (self._training_metadata_path, self._prev_training_metadata_path),
            ):
                if os.path.exists(current):
                    os.replace(current, previous)
            os.replace(temporary, self._weights_path)
        finally:
            if os.path.exists(temporary):
                os.remove(temporary)
        _write_json_atomically(self._training_metadata_path, record)

    def on_train_begin(self, logs=None):
        weights = [
            path for path in (self._weights_path, self._prev_weights_path) if os.path.exists(path)
        ]
        if not weights:
            return
        if self.model.optimizer is not None and not self.model.optimizer.built:
            self.model.optimizer.build(self.model.trainable_variables)
        problems, records = [], []
        for slot, path in enumerate(
            (self._training_metadata_path, self._prev_training_metadata_path)
        ):
            record = _read_record(path)
            if isinstance(record, str):
                problems.append(record)
            elif record is not None:
                records.append((slot, path, record))
        for path in weights:
            slot = 0 if path == self._weights_path else 1
            try:
                self.model.load_weights(path)
            except Exception as error:  # noqa: BLE001 - h5py raises several kinds on bad files
                problems.append(f"{path}: unreadable ({type(error).__name__}: {error})")
                continue
            step = int(self.model.optimizer.iterations.numpy())
            # Records from before the step was stored pair with the weights of their slot.
            matches = [
                (record_path, record)
                for record_slot, record_path, record in records
                if record.get("step", step if record_slot == slot else None) == step
            ]
            if not matches:
                problems.append(f"{path}: step {step} has no matching training_metadata record")
                continue
            record_path, record = matches[0]
            self.model._initial_epoch = record["epoch"]
            self.restored_from = (path, record_path, record)
            if problems:
                print(
                    "Backup: skipped damaged files (" + "; ".join(problems) + f"); resumed "
                    f"from {path} (optimizer step {step}).",
                    flush=True,
                )
            return
        raise ValueError(
            f"Cannot resume from the backup in {self.backup_dir!r}: "
            + "; ".join(problems)
            + ". Delete that folder to start the run again from the beginning."
        )
