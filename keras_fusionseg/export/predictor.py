"""One loader for the three shipped forms: `.keras`, SavedModel directory, `.tflite`.

`.keras` and `.tflite` models run in `evaluation.inference.SegmentationPipeline` (for
`.tflite`: `TFLiteSegmenter`, the same pipeline around a LiteRT interpreter); a SavedModel's
`serving_default` signature was traced from that pipeline at export, so it is called as it is.
"""

import os

import numpy as np
import tensorflow as tf

from keras_fusionseg.evaluation.inference import SegmentationPipeline
from keras_fusionseg.export.optimize import with_precision
from keras_fusionseg.export.saved_model import (
    fold_batch_norm_if_functional,
    is_saved_model_dir,
    load_keras_model,
)
from keras_fusionseg.export.tflite import TFLiteSegmenter


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
        """int32 class ids (H, W) of one uint8 image (H, W, C)."""
        images = tf.constant(np.asarray(image, np.uint8)[None])
        return self.signature(images=images)["class_ids"][0].numpy()


def load_segmenter(path, *, fold_batch_norm=False, precision="float32", **options):
    """A segmenter (`.class_ids(image (H, W, C) uint8) -> (H, W) int32`) for any shipped form.

    Args:
        path: a `.keras` file, a training workdir, a SavedModel directory or a `.tflite` file.
        fold_batch_norm: bool, `.keras` only: fold batch norms into their convs first
            (`export.optimize.fold_batch_norm`; same class ids, fewer ops).
        precision: "float32" or "bfloat16", `.keras` only: "bfloat16" rebuilds the model
            under the mixed_bfloat16 policy (`export.optimize.to_bfloat16`); resolve the
            scripts' "auto" with `export.optimize.resolve_inference_precision` first.
        **options: `SegmentationPipeline` size handling (`size_policy`, `size_divisor`, ...)
            for `.keras` and `.tflite` (plus `num_threads`); a SavedModel has it baked in.

    Returns:
        a `SegmentationPipeline` (`.keras`), `TFLiteSegmenter` (`.tflite`) or
        `SavedModelSegmenter`; each has `.class_ids`, `.channels` and `.kind`.
    """
    path = os.fspath(path)
    if not os.path.exists(path):
        raise ValueError(f"Model path {path!r} does not exist.")
    if precision != "float32" and (path.endswith(".tflite") or is_saved_model_dir(path)):
        raise ValueError(
            f"precision={precision!r} applies to .keras models only; {path!r} is a "
            f"{'.tflite file' if path.endswith('.tflite') else 'SavedModel'} with its dtypes "
            "fixed at export."
        )
    if path.endswith(".tflite"):
        return TFLiteSegmenter(path, **options)
    if is_saved_model_dir(path):
        if options or fold_batch_norm:
            raise ValueError(
                f"A SavedModel has its size handling baked in; options {sorted(options)} do not apply."
            )
        return SavedModelSegmenter(path)
    model = with_precision(load_keras_model(path), precision)
    if fold_batch_norm:  # same logits, fewer ops (export.optimize): +4-11% images/s measured
        model = fold_batch_norm_if_functional(model)
    return SegmentationPipeline(model, **options)
