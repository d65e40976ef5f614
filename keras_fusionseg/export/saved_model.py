"""SavedModel export whose signatures own pre- and post-processing (TF Model Garden style).

A client sends raw images and receives class ids at the image's own resolution:

- `serving_default`: `images` uint8 `[batch, height, width, channels]`, any height and width;
- `serve_bytes`: `images` string `[batch]` of encoded PNG or JPEG (one size per batch);
- `serve_examples`: `examples` string `[batch]` of serialized `tf.train.Example` with the
  TFRecord keys of `keras_fusionseg.data` (`image/encoded`, ...).

Every signature returns `class_ids` int32 `[batch, height, width]` and, when exported with
`include_probabilities=True`, `probabilities` float32 `[batch, height, width, num_classes]`.

How a model trained on crops meets a full image is the `size_policy` export option:

- `"whole"` (default for models of unknown height/width): run the model on the image as it
  is. Every model of the library takes any size, and this is exactly what `evaluate.py`
  scores, so the exported model ships the accuracy that is reported.
- `"pad"`: pad at the bottom and right up to a multiple of `size_divisor` (`pad_mode`
  `"constant"` with `pad_value`, the mean pixel by default, or `"symmetric"`: mirrored
  image) and crop the logits back. `"native"` is its former name. On CamVid val it cost
  up to 3.5 points mIoU with constant padding (see the README's size-policy table).
- `"resize"`: resize the image (bilinear) to `input_size`, run, resize the logits back.
  Models built with a fixed input size always use this.
"""

import os

import keras
import tensorflow as tf

from keras_fusionseg.layers.common import resize_bilinear

SIZE_POLICIES = ("whole", "pad", "resize")
PAD_MODES = ("constant", "symmetric")
_POLICY_ALIASES = {"native": "pad"}  # former name
IMAGE_KEY = "image/encoded"
SAVED_MODEL_FILE = "saved_model.pb"


def main_logits(outputs):
    """The per-pixel logits of a model's output (a tensor, or a dict with `"logits"`)."""
    if isinstance(outputs, dict):
        if "logits" not in outputs:
            raise ValueError(
                f"A model returning a dict must have a 'logits' output, got keys {sorted(outputs)}."
            )
        return outputs["logits"]
    return outputs


def find_keras_file(path):
    """A `.keras` file given itself or a training workdir holding one.

    In a workdir, prefers `best.keras`, then `model.keras`, then the most recent `*.keras`
    (searching `checkpoints/` too).
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
    for preferred in ("best.keras", "model.keras"):
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


class SegmentationPipeline:
    """uint8 images of any size -> per-pixel logits at that size, around a Keras model.

    Args:
        model: a `keras.Model` from raw pixels in [0, 255] to logits (or a dict with "logits").
        size_policy: `"whole"`, `"pad"` or `"resize"` (see the module docstring); None
            chooses `"resize"` for a model with a fixed input size and `"whole"` otherwise.
        size_divisor: int, `"pad"` pads height and width up to a multiple of it; 32 suits
            every output stride (8, 16, 32) of the library.
        input_size: (height, width) for `"resize"`; defaults to the model's fixed input size.
        pad_value: float, raw pixel value of constant padding (127.5 maps to 0 after "tf"
            normalisation).
        pad_mode: `"constant"` or `"symmetric"` (mirror the image's border pixels).
    """

    def __init__(
        self,
        model,
        *,
        size_policy=None,
        size_divisor=32,
        input_size=None,
        pad_value=127.5,
        pad_mode="constant",
    ):
        static_hw = tuple(model.input_shape[1:3])
        fixed = all(d is not None for d in static_hw)
        if size_policy is None:
            size_policy = "resize" if fixed else "whole"
        size_policy = _POLICY_ALIASES.get(size_policy, size_policy)
        if size_policy not in SIZE_POLICIES:
            raise ValueError(
                f"`size_policy` must be one of {list(SIZE_POLICIES)}, received {size_policy!r}."
            )
        if pad_mode not in PAD_MODES:
            raise ValueError(f"`pad_mode` must be one of {list(PAD_MODES)}, received {pad_mode!r}.")
        if size_policy in ("whole", "pad") and fixed:
            raise ValueError(
                f"`size_policy={size_policy!r}` needs a model built with unknown height and "
                f"width, but this model's input size is fixed at {static_hw}; use 'resize'."
            )
        if not isinstance(size_divisor, int) or isinstance(size_divisor, bool) or size_divisor < 1:
            raise ValueError(
                f"`size_divisor` must be a positive integer, received {size_divisor!r}."
            )
        if size_policy == "resize":
            input_size = tuple(input_size) if input_size is not None else static_hw
            if len(input_size) != 2 or not all(isinstance(d, int) and d > 0 for d in input_size):
                raise ValueError(
                    "`input_size` must be (height, width) positive integers for "
                    f"`size_policy='resize'`, received {input_size!r}."
                )
        self.model = model
        self.size_policy = size_policy
        self.size_divisor = size_divisor
        self.input_size = input_size
        self.pad_value = float(pad_value)
        self.pad_mode = pad_mode
        self.channels = model.input_shape[-1]

    def logits(self, images):
        """uint8 or float images (B, H, W, C) in [0, 255] -> float32 logits (B, H, W, K)."""
        x = tf.cast(images, tf.float32)
        height, width = tf.shape(x)[1], tf.shape(x)[2]
        if self.size_policy == "whole":
            return tf.cast(main_logits(self.model(x, training=False)), tf.float32)
        if self.size_policy == "pad":
            d = self.size_divisor
            pad_h = (d - height % d) % d
            pad_w = (d - width % d) % d
            paddings = [[0, 0], [0, pad_h], [0, pad_w], [0, 0]]
            if self.pad_mode == "symmetric":
                x = tf.pad(x, paddings, mode="SYMMETRIC")
            else:
                x = tf.pad(x, paddings, constant_values=self.pad_value)
            logits = main_logits(self.model(x, training=False))
            return tf.cast(logits[:, :height, :width, :], tf.float32)
        x = resize_bilinear(x, self.input_size)
        logits = tf.cast(main_logits(self.model(x, training=False)), tf.float32)
        return resize_bilinear(logits, tf.stack([height, width]))

    def config(self):
        return {
            "size_policy": self.size_policy,
            "size_divisor": self.size_divisor,
            "input_size": list(self.input_size) if self.input_size else None,
            "pad_value": self.pad_value,
            "pad_mode": self.pad_mode,
        }


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
    fold_batch_norm=False,
):
    """Writes a SavedModel with raw-image signatures around `model`.

    Args:
        model: a `keras.Model` from raw pixels to logits (see `SegmentationPipeline`).
        export_dir: str, output directory.
        size_policy, size_divisor, input_size, pad_value, pad_mode: see
            `SegmentationPipeline` (default: the whole image as it is, as `evaluate.py`).
        include_probabilities: bool, also output softmax `probabilities`.
        signatures: which of `serving_default`, `serve_bytes`, `serve_examples` to write.
        fold_batch_norm: bool, export the model with batch norms folded into their convs
            (`export.optimize.fold_batch_norm`: same logits to float rounding, fewer ops;
            not yet measured faster, so off by default); functional models only, others are
            exported as they are.

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

    def postprocess(logits):
        outputs = {"class_ids": tf.argmax(logits, axis=-1, output_type=tf.int32)}
        if include_probabilities:
            outputs["probabilities"] = tf.nn.softmax(logits, axis=-1)
        return outputs

    def serve_images(images):
        return postprocess(pipeline.logits(images))

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
