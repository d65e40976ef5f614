"""The one inference path: raw images of any size -> logits, probabilities, class ids.

`SegmentationPipeline` is what every consumer of a trained model runs: `evaluate.py`
(`evaluation.evaluate`), `predict.py` (`export.load_segmenter`), the exported SavedModel's
signatures (traced from it by `export.export_saved_model`, and so `serve.py`), and the TFLite
runner (`export.TFLiteSegmenter`, the same pipeline around a LiteRT interpreter). So the
metrics we report are those of the model we ship, size handling included.

It does, in order:

1. preprocessing: raw pixels in [0, 255] (uint8 or float) cast to float32, one image
   `[H, W, C]` or a batch `[B, H, W, C]`; the models normalise inside their graph;
2. size handling, the `size_policy`:

   - `"whole"` (default for models of unknown height/width): the image as it is. Every
     model of the library takes any size; this is what the reported metrics score.
   - `"pad"`: pad at the bottom and right up to a multiple of `size_divisor` (`pad_mode`
     `"constant"` with `pad_value`, the mean pixel by default, or `"symmetric"`: the mirrored
     image), run, crop the logits back. `"native"` is its former name. On CamVid val it cost
     up to 3.5 points mIoU with constant padding (see the README's size-policy table).
   - `"resize"` (default, and the only choice, for models of fixed size): resize the image
     (bilinear) to `input_size`, run, resize the logits back.
   - `"multiscale"` (evaluation): mean probabilities over rescaled and left-right flipped
     copies (DeepLabv3+, Chen et al., ECCV 2018, Sec. 4.1).
   - `"sliding"` (evaluation): mean probabilities over overlapping `crop_size` windows.

   The first three are one model call each and can be traced into a graph (the SavedModel
   signatures); the last two run each copy or window as the model's own default (`"whole"`,
   or `"resize"` for a fixed-size model);
3. the model call (a `keras.Model`, or any object with `input_shape` called as
   `model(x, training=False)`, such as the TFLite runner's `export.tflite.TFLiteModel`);
4. the argmax: `class_ids` is the argmax of the logits (of the mean probabilities for
   `"multiscale"` and `"sliding"`).
"""

import math

import keras
import numpy as np
import tensorflow as tf

from keras_fusionseg.layers.common import resize_bilinear

SINGLE_PASS_POLICIES = ("whole", "pad", "resize")
MULTI_PASS_POLICIES = ("multiscale", "sliding")
SIZE_POLICIES = SINGLE_PASS_POLICIES + MULTI_PASS_POLICIES
EVAL_MODES = ("whole", "multiscale", "sliding")  # evaluate(mode=...): a size policy each
PAD_MODES = ("constant", "symmetric")
DEFAULT_SCALES = (0.5, 0.75, 1.0, 1.25, 1.5, 1.75)
_POLICY_ALIASES = {"native": "pad"}  # former name


def main_logits(outputs):
    """The per-pixel logits of a model's output (a tensor, or a dict with `"logits"`)."""
    if isinstance(outputs, dict):
        if "logits" not in outputs:
            raise ValueError(
                f"A model returning a dict must have a 'logits' output, got keys {sorted(outputs)}."
            )
        return outputs["logits"]
    return outputs


def pad_to_multiple(images, divisor, *, mode="constant", value=127.5):
    """Pads images [B, H, W, C] at the bottom and right up to multiples of `divisor`."""
    height, width = tf.shape(images)[1], tf.shape(images)[2]
    paddings = [[0, 0], [0, (divisor - height % divisor) % divisor]]
    paddings += [[0, (divisor - width % divisor) % divisor], [0, 0]]
    if mode == "symmetric":
        return tf.pad(images, paddings, mode="SYMMETRIC")
    return tf.pad(images, paddings, constant_values=value)


def window_starts(length, window, stride):
    """Window offsets covering [0, length): every `stride`, plus one flush with the end."""
    if length <= window:
        return [0]
    starts = list(range(0, length - window + 1, stride))
    if starts[-1] != length - window:
        starts.append(length - window)
    return starts


def _positive_pair(value, name):
    try:
        pair = tuple(int(v) for v in value)
    except (TypeError, ValueError):
        pair = ()
    if len(pair) != 2 or min(pair) < 1 or pair != tuple(value):
        raise ValueError(f"`{name}` must be (height, width) positive integers, received {value!r}.")
    return pair


class SegmentationPipeline:
    """Raw images of any size -> logits, probabilities and class ids at that size.

    Args:
        model: a `keras.Model` from raw pixels in [0, 255] to logits (or a dict with
            "logits"), or another model with `input_shape` (see the module docstring).
        size_policy: one of `SIZE_POLICIES` (see the module docstring); None chooses
            `"resize"` for a model with a fixed input size and `"whole"` otherwise.
        size_divisor: int, `"pad"` pads height and width up to a multiple of it; 32 suits
            every output stride (8, 16, 32) of the library.
        input_size: (height, width) for `"resize"`; defaults to the model's fixed input size.
        pad_value: float, raw pixel value of constant padding (127.5 maps to 0 after "tf"
            normalisation).
        pad_mode: `"constant"` or `"symmetric"` (mirror the image's border pixels).
        scales: `"multiscale"`: positive floats, each copy resized to round(scale * size).
        flip: bool, `"multiscale"` also averages the left-right mirrored copies.
        crop_size: `"sliding"`: (height, width) of the windows (e.g. the training crop). Sides
            shorter than the window are zero-padded at the bottom/right and cropped back.
        stride: `"sliding"`: (height, width) window step; None: 2/3 of the window.

    Example:
    >>> import keras, numpy as np
    >>> inputs = keras.Input((None, None, 3))
    >>> model = keras.Model(inputs, keras.layers.Conv2D(4, 1)(inputs))
    >>> SegmentationPipeline(model).class_ids(np.zeros((67, 93, 3), np.uint8)).shape
    (67, 93)
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
        scales=DEFAULT_SCALES,
        flip=True,
        crop_size=None,
        stride=None,
    ):
        static_hw = tuple(model.input_shape[1:3])
        fixed = all(d is not None for d in static_hw)
        size_policy = _POLICY_ALIASES.get(size_policy, size_policy)
        if size_policy is not None and size_policy not in SIZE_POLICIES:
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
        # One model call: the policy asked for, or the model's own default (multi-pass copies).
        self.pass_policy = (
            size_policy if size_policy in SINGLE_PASS_POLICIES else "resize" if fixed else "whole"
        )
        self.size_policy = size_policy or self.pass_policy
        if self.pass_policy == "resize":
            input_size = tuple(input_size) if input_size is not None else static_hw
            if len(input_size) != 2 or not all(isinstance(d, int) and d > 0 for d in input_size):
                raise ValueError(
                    "`input_size` must be (height, width) positive integers for "
                    f"`size_policy='resize'`, received {input_size!r}."
                )
        if self.size_policy == "multiscale":
            scales = tuple(scales or ())
            if not scales or any(not s > 0 for s in scales):
                raise ValueError(
                    f"`scales` must be a non-empty sequence of positive numbers, received {scales!r}."
                )
        if self.size_policy == "sliding":
            if crop_size is None:
                raise ValueError(
                    "`size_policy='sliding'` needs `crop_size` (e.g. the training crop)."
                )
            crop_size = _positive_pair(crop_size, "crop_size")
            if stride is None:
                stride = tuple(max(1, math.ceil(c * 2 / 3)) for c in crop_size)
            stride = _positive_pair(stride, "stride")
        self.model = model
        self.size_divisor = size_divisor
        self.input_size = input_size
        self.pad_value = float(pad_value)
        self.pad_mode = pad_mode
        self.scales = tuple(float(s) for s in scales or ())
        self.flip = bool(flip)
        self.crop_size = crop_size
        self.stride = stride
        self.channels = model.input_shape[-1]
        self.kind = "keras" if isinstance(model, keras.Model) else getattr(model, "kind", "model")
        if isinstance(model, keras.Model):
            # One graph for every image size (reduce_retracing still traces several).
            spec = tf.TensorSpec([None, None, None, self.channels], tf.float32)
            self._run = tf.function(self._one_pass, input_signature=[spec])
        else:
            self._run = self._one_pass  # e.g. a LiteRT interpreter: runs eagerly

    # --- the steps ------------------------------------------------------------------------

    def _preprocess(self, images):
        """Raw pixels -> float32 [B, H, W, C], and whether a single image was given."""
        x = tf.cast(tf.convert_to_tensor(images), tf.float32)
        if x.shape.rank == 2 and self.channels == 1:
            x = x[..., None]
        single = x.shape.rank == 3
        if single:
            x = x[None]
        if x.shape.rank != 4 or (self.channels is not None and x.shape[-1] != self.channels):
            raise ValueError(
                f"The model takes {self.channels}-channel images [H, W, {self.channels}] or "
                f"[B, H, W, {self.channels}], received shape {tuple(x.shape)}."
            )
        return x, single

    def _model_logits(self, x):
        return tf.cast(main_logits(self.model(x, training=False)), tf.float32)

    def _one_pass(self, x):
        """float32 [B, H, W, C] -> logits [B, H, W, K]: one model call under `pass_policy`."""
        height, width = tf.shape(x)[1], tf.shape(x)[2]
        if self.pass_policy == "whole":
            return self._model_logits(x)
        if self.pass_policy == "pad":
            x = pad_to_multiple(x, self.size_divisor, mode=self.pad_mode, value=self.pad_value)
            return self._model_logits(x)[:, :height, :width, :]
        logits = self._model_logits(resize_bilinear(x, self.input_size))
        return resize_bilinear(logits, tf.stack([height, width]))

    def _pass(self, x):
        return self._run(x) if tf.executing_eagerly() else self._one_pass(x)

    def _multiscale(self, x):
        height, width = int(x.shape[1]), int(x.shape[2])
        total, count = 0.0, 0
        for scale in self.scales:
            size = (max(1, round(scale * height)), max(1, round(scale * width)))
            scaled = x if size == (height, width) else resize_bilinear(x, size)
            for flipped in (False, True) if self.flip else (False,):
                copy = tf.reverse(scaled, axis=[2]) if flipped else scaled
                probs = tf.nn.softmax(self._pass(copy), axis=-1)
                if flipped:
                    probs = tf.reverse(probs, axis=[2])
                if size != (height, width):
                    probs = resize_bilinear(probs, (height, width))
                total += probs
                count += 1
        return total / count

    def _sliding(self, x):
        (crop_h, crop_w), (stride_h, stride_w) = self.crop_size, self.stride
        height, width = int(x.shape[1]), int(x.shape[2])
        pad_h, pad_w = max(crop_h - height, 0), max(crop_w - width, 0)
        x = tf.pad(x, [[0, 0], [0, pad_h], [0, pad_w], [0, 0]])
        full_h, full_w = height + pad_h, width + pad_w
        total = None
        counts = np.zeros((1, full_h, full_w, 1), np.float32)
        for top in window_starts(full_h, crop_h, stride_h):
            for left in window_starts(full_w, crop_w, stride_w):
                window = x[:, top : top + crop_h, left : left + crop_w]
                probs = tf.nn.softmax(self._pass(window), axis=-1).numpy()
                if total is None:
                    total = np.zeros((x.shape[0], full_h, full_w, probs.shape[-1]), np.float32)
                total[:, top : top + crop_h, left : left + crop_w] += probs
                counts[:, top : top + crop_h, left : left + crop_w] += 1.0
        return tf.constant((total / counts)[:, :height, :width])

    # --- public -----------------------------------------------------------------------------

    def logits(self, images):
        """float32 logits [(B,) H, W, K] of raw images [(B,) H, W, C] (single-pass policies).

        Traceable for Keras models: the SavedModel signatures call it on their uint8 input.
        """
        if self.size_policy in MULTI_PASS_POLICIES:
            raise ValueError(
                f"`size_policy={self.size_policy!r}` averages probabilities over several model "
                "calls; use `probabilities` or `class_ids`."
            )
        x, single = self._preprocess(images)
        logits = self._pass(x)
        return logits[0] if single else logits

    def probabilities(self, images):
        """float32 class probabilities [(B,) H, W, K] of raw images [(B,) H, W, C]."""
        return self.outputs(images, probabilities=True)["probabilities"]

    def outputs(self, images, *, probabilities=False):
        """`{"class_ids": int32 [(B,) H, W]}` and, if asked, `"probabilities"` [..., K].

        The class ids are the argmax of the logits (of the mean probabilities for
        "multiscale" and "sliding"). Traceable for single-pass policies and Keras models: the
        SavedModel signatures return this.
        """
        x, single = self._preprocess(images)
        if self.size_policy == "multiscale":
            scores = probs = self._multiscale(x)
        elif self.size_policy == "sliding":
            scores = probs = self._sliding(x)
        else:
            scores = self._pass(x)
            probs = tf.nn.softmax(scores, axis=-1) if probabilities else None
        outputs = {"class_ids": tf.argmax(scores, axis=-1, output_type=tf.int32)}
        if probabilities:
            outputs["probabilities"] = probs
        return {key: value[0] for key, value in outputs.items()} if single else outputs

    def class_ids(self, images):
        """int32 NumPy class ids [(B,) H, W] of raw images [(B,) H, W, C] (uint8 or float)."""
        return self.outputs(images)["class_ids"].numpy()

    def config(self):
        """How sizes are handled, as JSON-ready values (written beside exported models)."""
        config = {
            "size_policy": self.size_policy,
            "size_divisor": self.size_divisor,
            "input_size": list(self.input_size) if self.input_size else None,
            "pad_value": self.pad_value,
            "pad_mode": self.pad_mode,
        }
        if self.size_policy == "multiscale":
            config.update(scales=list(self.scales), flip=self.flip)
        if self.size_policy == "sliding":
            config.update(crop_size=list(self.crop_size), stride=list(self.stride))
        return config
