"""TFLite conversion (fp32, fp16, dynamic-range int8, full int8) and a LiteRT runner.

The converted graph is the model itself: raw pixels in [0, 255] `[1, H, W, C]` to logits
`[1, H, W, K]`. `TFLiteSegmenter` runs it inside `evaluation.inference.SegmentationPipeline`,
the size handling and argmax of `evaluate.py` and of the SavedModel signatures. Full int8 takes
uint8 pixels directly (its input scale is 1, zero point 0 for calibration data spanning
0..255) and returns float32 logits. Height and width are fixed (`input_size`) or dynamic
(`input_size=None`: the interpreter is resized to each image).

The interpreter is `ai_edge_litert` (`tf.lite.Interpreter` is deprecated in TF 2.21).
"""

import os
import warnings

import keras
import numpy as np
import tensorflow as tf

from keras_fusionseg.evaluation.inference import SegmentationPipeline, main_logits, pad_to_multiple
from keras_fusionseg.layers.atrous import native_dilated_convs
from keras_fusionseg.layers.common import resize_bilinear

QUANTIZATIONS = ("fp32", "fp16", "dynamic_int8", "full_int8")


def convert_to_tflite(model, **options):
    """Converts a Keras segmentation model to a TFLite flatbuffer (bytes); see `make_converter`."""
    converter = make_converter(model, **options)
    with warnings.catch_warnings():
        # With uint8 input the input scale comes from calibration; the legacy
        # `quantized_input_stats` this warns about are not used.
        warnings.filterwarnings("ignore", "Statistics for quantized inputs")
        return converter.convert()


def make_converter(
    model,
    *,
    quantization="fp32",
    input_size=None,
    representative_images=None,
    num_calibration=None,
    uint8_input=True,
):
    """A configured `tf.lite.TFLiteConverter` for a Keras segmentation model.

    Args:
        model: a `keras.Model` from raw pixels to logits (or a dict with "logits").
        quantization: one of `"fp32"`, `"fp16"` (fp16 weights), `"dynamic_int8"` (int8
            weights, float activations), `"full_int8"` (int8 weights and activations,
            calibrated on `representative_images`).
        input_size: (height, width) for a fixed-shape model, or None for dynamic height/width
            (batch is 1 in both cases).
        representative_images: for `"full_int8"`, an iterable of images (H, W, C) or (1, H, W, C)
            in [0, 255] from the real input pipeline; with a fixed `input_size` they must have
            that size.
        num_calibration: int or None, use at most this many representative images.
        uint8_input: bool, full int8 models take uint8 pixels (else float32, as the
            quantization debugger needs).
    """
    if quantization not in QUANTIZATIONS:
        raise ValueError(
            f"`quantization` must be one of {list(QUANTIZATIONS)}, received {quantization!r}."
        )
    if quantization == "full_int8" and representative_images is None:
        raise ValueError("`quantization='full_int8'` needs `representative_images`.")
    channels = model.input_shape[-1]
    if input_size is not None:
        input_size = tuple(input_size)
        if len(input_size) != 2 or not all(isinstance(d, int) and d > 0 for d in input_size):
            raise ValueError(
                f"`input_size` must be None or (height, width) positive integers, received {input_size!r}."
            )
        height, width = input_size
    else:
        height = width = None

    @tf.function(input_signature=[tf.TensorSpec([1, height, width, channels], tf.float32)])
    def infer(images):
        return {"logits": tf.cast(main_logits(model(images, training=False)), tf.float32)}

    # TFLite has dilated CONV_2D / DEPTHWISE_CONV_2D kernels: trace the native ops, one per
    # layer, which the converter fuses with their batch norms (layers/atrous.py).
    with native_dilated_convs():
        concrete = infer.get_concrete_function()
    converter = tf.lite.TFLiteConverter.from_concrete_functions([concrete], model)
    # Convert the frozen graph directly: the default detour through a temporary SavedModel
    # costs 2-3x the conversion time on our models and leaves Keras 3 variables unfrozen.
    converter.experimental_lower_to_saved_model = False
    _configure(converter, quantization, representative_images, num_calibration, uint8_input)
    return converter


def _configure(converter, quantization, representative_images, num_calibration, uint8_input):
    if quantization != "fp32":
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
    if quantization == "fp16":
        converter.target_spec.supported_types = [tf.float16]
    if quantization == "full_int8":
        images = list(representative_images)[:num_calibration]
        if not images:
            raise ValueError("`representative_images` is empty.")

        def representative_dataset():
            progress = keras.utils.Progbar(len(images), unit_name="calibration image")
            for done, image in enumerate(images, start=1):
                image = np.asarray(image, np.float32)
                yield [image.reshape((1,) + image.shape[-3:])]
                progress.update(done)

        converter.representative_dataset = representative_dataset
        converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
        if uint8_input:
            converter.inference_input_type = tf.uint8


def _interpreter_class():
    from ai_edge_litert.interpreter import Interpreter

    return Interpreter


class TFLiteModel:
    """A `.tflite` segmentation model made by `convert_to_tflite`, called like a Keras model.

    `model(images [B, h, w, C] raw pixels)` -> float32 logits `[B, h, w, K]` at the given
    size (full int8: pixels quantized with the input scale, logits dequantized). Dynamic-shape
    models take any size; the interpreter is resized when the size changes. Size handling is
    `SegmentationPipeline`'s (see `TFLiteSegmenter`).

    Args:
        model: path of a `.tflite` file or its bytes.
        num_threads: int or None, interpreter threads.
    """

    kind = "tflite"

    def __init__(self, model, *, num_threads=None):
        if isinstance(model, bytes | bytearray):
            content = bytes(model)
            self.path = None
        else:
            self.path = os.fspath(model)
            if not os.path.isfile(self.path):
                raise ValueError(f"TFLite file {self.path!r} does not exist.")
            with open(self.path, "rb") as f:
                content = f.read()
        try:
            self.interpreter = _interpreter_class()(model_content=content, num_threads=num_threads)
        except ValueError as error:
            raise ValueError(
                f"Cannot read TFLite model {self.path or '<bytes>'}: {error}"
            ) from error
        self._input = self.interpreter.get_input_details()[0]
        self._output = self.interpreter.get_output_details()[0]
        signature = self._input["shape_signature"]
        self.dynamic = bool(signature[1] < 0 or signature[2] < 0)
        self.input_size = None if self.dynamic else (int(signature[1]), int(signature[2]))
        self.channels = int(signature[3])
        self.input_shape = (1, *(self.input_size or (None, None)), self.channels)
        self.input_dtype = self._input["dtype"]
        self._shape = None
        if not self.dynamic:
            self.interpreter.allocate_tensors()
            self._shape = tuple(self._input["shape"])

    def _set_shape(self, shape):
        if shape != self._shape:
            self.interpreter.resize_tensor_input(self._input["index"], list(shape), strict=False)
            self.interpreter.allocate_tensors()
            self._shape = shape
            self._output = self.interpreter.get_output_details()[0]

    def _invoke(self, image):
        """Logits (1, h, w, K) float32 of one image (1, h, w, C)."""
        self._set_shape(tuple(image.shape))
        if self.input_dtype == np.float32:
            x = image.astype(np.float32)
        else:
            scale, zero_point = self._input["quantization"]
            info = np.iinfo(self.input_dtype)
            x = np.round(image.astype(np.float32) / scale + zero_point)
            x = np.clip(x, info.min, info.max).astype(self.input_dtype)
        self.interpreter.set_tensor(self._input["index"], x)
        self.interpreter.invoke()
        out = self.interpreter.get_tensor(self._output["index"])
        if out.dtype != np.float32:
            scale, zero_point = self._output["quantization"]
            out = (out.astype(np.float32) - zero_point) * scale
        return out

    def __call__(self, images, training=False):
        images = np.asarray(images)
        if images.ndim == 3:
            images = images[None]
        return np.concatenate([self._invoke(image[None]) for image in images])


class TFLiteSegmenter(SegmentationPipeline):
    """`SegmentationPipeline` (the inference path of `evaluate.py` and the SavedModel) around a
    `.tflite` model run with LiteRT: `class_ids(image)`, `logits(image)`, ... of any size.

    Args:
        model: path of a `.tflite` file or its bytes.
        num_threads: int or None, interpreter threads.
        **size_options: `SegmentationPipeline` size handling; default: the image as it is
            for dynamic-shape models (what `evaluate.py` scores), resized for fixed ones.
    """

    def __init__(self, model, *, num_threads=None, **size_options):
        super().__init__(TFLiteModel(model, num_threads=num_threads), **size_options)

    @property
    def interpreter(self):
        return self.model.interpreter


def representative_images(
    source,
    split="train",
    *,
    data_dir=None,
    num_images=100,
    input_size=None,
    size_divisor=1,
    pad_value=127.5,
    channels=3,
):
    """Calibration images from the real input pipeline, shaped as inference will see them.

    Images come from `keras_fusionseg.data.load_split` + `eval_pipeline` (original resolution),
    then are padded to a multiple of `size_divisor` (dynamic models) or resized to
    `input_size` (fixed models) with the functions `SegmentationPipeline` uses at inference.

    Args:
        source, split, data_dir: see `keras_fusionseg.data.load_split`.
        num_images: int, how many images (the first ones of the split).
        input_size: None or (height, width).
        size_divisor, pad_value: padding for dynamic models (1: none, the "whole" policy
            `TFLiteSegmenter` runs by default).
        channels: int, model input channels.

    Returns:
        list of float32 arrays (1, H, W, channels) in [0, 255].
    """
    from keras_fusionseg import data

    dataset = data.eval_pipeline(
        data.load_split(source, split, data_dir=data_dir), channels=channels
    ).take(num_images)
    images = []
    for image, _ in dataset.as_numpy_iterator():
        image = tf.cast(image, tf.float32)
        if input_size is not None:
            image = resize_bilinear(image, input_size)
        else:
            image = pad_to_multiple(image, size_divisor, value=pad_value)
        images.append(np.round(image.numpy()))
    if not images:
        raise ValueError(f"No calibration images in split {split!r} of {source!r}.")
    return images
