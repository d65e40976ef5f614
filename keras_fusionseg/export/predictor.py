"""One interface over the three shipped forms: `.keras`, SavedModel directory, `.tflite`."""

import os

import numpy as np
import tensorflow as tf

from keras_fusionseg.export.saved_model import (
    SegmentationPipeline,
    fold_batch_norm_if_functional,
    is_saved_model_dir,
    load_keras_model,
)
from keras_fusionseg.export.tflite import TFLiteSegmenter


class KerasSegmenter:
    """Class ids from a Keras model, with the same size handling as the exported signatures."""

    kind = "keras"

    def __init__(self, model, *, fold_batch_norm=False, **pipeline_options):
        if fold_batch_norm:  # same logits, fewer ops (export.optimize); not yet measured faster
            model = fold_batch_norm_if_functional(model)
        self.pipeline = SegmentationPipeline(model, **pipeline_options)
        self.channels = self.pipeline.channels
        self._logits = tf.function(self.pipeline.logits, reduce_retracing=True)

    def class_ids(self, image):
        logits = self._logits(tf.constant(np.asarray(image)[None]))
        return tf.argmax(logits[0], axis=-1, output_type=tf.int32).numpy()


class SavedModelSegmenter:
    """Class ids from the `serving_default` signature of an exported SavedModel."""

    kind = "saved_model"

    def __init__(self, path):
        self.loaded = tf.saved_model.load(os.fspath(path))
        if "serving_default" not in self.loaded.signatures:
            raise ValueError(f"SavedModel {path!r} has no 'serving_default' signature.")
        self.signature = self.loaded.signatures["serving_default"]
        self.channels = self.signature.structured_input_signature[1]["images"].shape[-1]

    def class_ids(self, image):
        images = tf.constant(np.asarray(image, np.uint8)[None])
        return self.signature(images=images)["class_ids"][0].numpy()


class LiteSegmenter:
    """Class ids from a `.tflite` file (LiteRT interpreter)."""

    kind = "tflite"

    def __init__(self, path, **options):
        self.runner = TFLiteSegmenter(path, **options)
        self.channels = self.runner.channels

    def class_ids(self, image):
        return self.runner.class_ids(image)


def load_segmenter(path, **options):
    """A segmenter (`.class_ids(image (H, W, C) uint8) -> (H, W) int32`) for any shipped form.

    Args:
        path: a `.keras` file, a training workdir, a SavedModel directory or a `.tflite` file.
        **options: size-handling options (`size_policy`, `size_divisor`, ... for Keras;
            `size_divisor`, `num_threads` for TFLite); a SavedModel has them baked in.
    """
    path = os.fspath(path)
    if not os.path.exists(path):
        raise ValueError(f"Model path {path!r} does not exist.")
    if path.endswith(".tflite"):
        return LiteSegmenter(path, **options)
    if is_saved_model_dir(path):
        if options:
            raise ValueError(
                f"A SavedModel has its size handling baked in; options {sorted(options)} do not apply."
            )
        return SavedModelSegmenter(path)
    return KerasSegmenter(load_keras_model(path), **options)
