"""SavedModel export whose signatures own pre- and post-processing (TF Model Garden style).

A client sends raw images and receives class ids at the image's own resolution:

- `serving_default`: `images` uint8 `[batch, height, width, channels]`, any height and width;
- `serve_bytes`: `images` string `[batch]` of encoded PNG or JPEG (one size per batch);
- `serve_examples`: `examples` string `[batch]` of serialized `tf.train.Example` with the
  TFRecord keys of `keras_fusionseg.data` (`image/encoded`, ...).

Every signature returns `class_ids` int32 `[batch, height, width]` and, when exported with
`include_probabilities=True`, `probabilities` float32 `[batch, height, width, num_classes]`.

How a model trained on crops meets a full image is the `size_policy` export option of
`evaluation.inference.SegmentationPipeline`, the inference path `evaluate.py`, `predict.py`
and the TFLite runner run too: the signatures are traced from it. `"whole"` (default for
models of unknown height/width) runs the model on the image as it is, exactly what
`evaluate.py` scores; `"pad"` pads to a multiple of `size_divisor` and crops back; `"resize"`
(models of fixed size) resizes to `input_size` and back. The evaluation-only policies
(`"multiscale"`, `"sliding"`) are not exported.
"""

import os

import keras
import tensorflow as tf

from keras_fusionseg.evaluation.inference import (  # noqa: F401  (main_logits: export API)
    SINGLE_PASS_POLICIES,
    SegmentationPipeline,
    main_logits,
)

IMAGE_KEY = "image/encoded"
SAVED_MODEL_FILE = "saved_model.pb"
SIZE_POLICIES = SINGLE_PASS_POLICIES  # the size policies a SavedModel can hold


# A workdir's checkpoint, in order of preference (`find_keras_file`).
DEFAULT_CHECKPOINTS = ("final.keras", "best.keras", "model.keras")


def find_keras_file(path):
    """A `.keras` file given itself or a training workdir holding one.

    In a workdir, prefers `final.keras` (the model `metrics.json` scores, and the one
    `evaluate.py` and presets use: the library's one default checkpoint), then `best.keras`,
    then `model.keras`, then the most recent `*.keras` (searching `checkpoints/` too).
    """
    path = os.fspath(path)
    if os.path.isfile(path):
        if not path.endswith(".keras"):
            raise ValueError(f"Model file {path!r} is not a `.keras` file.")
        return path
    if not os.path.isdir(path):
        raise ValueError(f"Model path {path!r} is neither a `.keras` file nor a directory.")
    candidates = []
    for folder in (path, os.path.join(path, "checkpoints")):
        if os.path.isdir(folder):
            candidates += [
                os.path.join(folder, name) for name in os.listdir(folder) if name.endswith(".keras")
            ]
    if not candidates:
        raise ValueError(
            f"Workdir {path!r} holds no `.keras` file (looked in it and checkpoints/)."
        )
    for preferred in DEFAULT_CHECKPOINTS:
        for candidate in candidates:
            if os.path.basename(candidate) == preferred:
                return candidate
    return max(candidates, key=os.path.getmtime)


def load_keras_model(path):
    """Loads a `.keras` file or the checkpoint of a training workdir (safe mode)."""
    import keras_fusionseg  # noqa: F401  (registers the custom layers for deserialisation)

    return keras.models.load_model(find_keras_file(path), compile=False)


def is_saved_model_dir(path):
    return os.path.isdir(path) and os.path.isfile(os.path.join(path, SAVED_MODEL_FILE))


def save_functions(model, export_dir, functions):
    """Saves `{signature name: (fn, input TensorSpec)}` using `model`'s variables as a SavedModel.

    A bare `tf.Module` holding only the variables is used instead of `keras.export.ExportArchive`,
    which walks every layer and retraces the model: this saves 2-4x faster on our models.
    """
    module = tf.Module()
    module.model_variables = [variable.value for variable in model.variables]
    concrete = {}
    for name, (fn, spec) in functions.items():
        function = tf.function(fn, input_signature=[spec])
        setattr(module, name, function)
        concrete[name] = function.get_concrete_function()
    tf.saved_model.save(module, os.fspath(export_dir), signatures=concrete)


def _decode(encoded, channels):
    """One PNG/JPEG string -> uint8 (H, W, channels); grey and RGB images both accepted."""
    image = tf.io.decode_image(encoded, channels=channels, expand_animations=False)
    image.set_shape([None, None, channels])
    return image


def fold_batch_norm_if_functional(model):
    """`model` with batch norms folded into their convs, or `model` itself if not functional."""
    from keras_fusionseg.export.optimize import fold_batch_norm

    return fold_batch_norm(model) if hasattr(model, "_nodes_by_depth") else model


def export_saved_model(
    model,
    export_dir,
    *,
    size_policy=None,
    size_divisor=32,
    input_size=None,
    pad_value=127.5,
    pad_mode="constant",
    include_probabilities=False,
    signatures=("serving_default", "serve_bytes", "serve_examples"),
    fold_batch_norm=True,
):
    """Writes a SavedModel with raw-image signatures around `model`.

    Args:
        model: a `keras.Model` from raw pixels to logits (see `SegmentationPipeline`).
        export_dir: str, output directory.
        size_policy, size_divisor, input_size, pad_value, pad_mode: see
            `SegmentationPipeline` (default: the whole image as it is, as `evaluate.py`);
            `size_policy` one of `SIZE_POLICIES`.
        include_probabilities: bool, also output softmax `probabilities`.
        signatures: which of `serving_default`, `serve_bytes`, `serve_examples` to write.
        fold_batch_norm: bool, export the model with batch norms folded into their convs
            (`export.optimize.fold_batch_norm`: same logits to float rounding, fewer ops;
            +4% images/s on ResNet-50 and +11% on MobileNetV2, README "Speed"), as
            `scripts/export.py` does; functional models only, others are exported as they
            are. False keeps the graph as trained.

    Returns:
        The `SegmentationPipeline` used (its `config()` says how sizes were handled).
    """
    known = ("serving_default", "serve_bytes", "serve_examples")
    unknown = [s for s in signatures if s not in known]
    if unknown or "serving_default" not in signatures:
        raise ValueError(
            f"`signatures` must include 'serving_default' and be among {list(known)}, "
            f"received {list(signatures)!r}."
        )
    if size_policy not in (None, "native", *SIZE_POLICIES):
        raise ValueError(
            f"`size_policy` must be one of {list(SIZE_POLICIES)} for export (one model call "
            f"per image), received {size_policy!r}."
        )
    if fold_batch_norm:
        model = fold_batch_norm_if_functional(model)
    pipeline = SegmentationPipeline(
        model,
        size_policy=size_policy,
        size_divisor=size_divisor,
        input_size=input_size,
        pad_value=pad_value,
        pad_mode=pad_mode,
    )
    channels = pipeline.channels

    def serve_images(images):
        return pipeline.outputs(images, probabilities=include_probabilities)

    def serve_bytes(images):
        decoded = tf.map_fn(
            lambda s: _decode(s, channels),
            images,
            fn_output_signature=tf.TensorSpec([None, None, channels], tf.uint8),
        )
        return serve_images(decoded)

    def serve_examples(examples):
        features = tf.io.parse_example(examples, {IMAGE_KEY: tf.io.FixedLenFeature([], tf.string)})
        return serve_bytes(features[IMAGE_KEY])

    images_spec = tf.TensorSpec([None, None, None, channels], tf.uint8, name="images")
    strings_spec = tf.TensorSpec([None], tf.string)
    functions = {"serving_default": (serve_images, images_spec)}
    if "serve_bytes" in signatures:
        functions["serve_bytes"] = (serve_bytes, strings_spec)
    if "serve_examples" in signatures:
        functions["serve_examples"] = (serve_examples, strings_spec)
    save_functions(model, export_dir, functions)
    return pipeline
