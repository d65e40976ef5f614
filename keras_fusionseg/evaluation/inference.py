"""Class probabilities for one image: whole image, multi-scale + flip, sliding window.

All modes return softmax probabilities [H, W, C] at the image's original resolution, so
their results average and compare directly. Images are raw pixels [H, W, channels].
"""

import math

import numpy as np
import tensorflow as tf

from keras_fusionseg.export.saved_model import SegmentationPipeline
from keras_fusionseg.layers.common import resize_bilinear

EVAL_MODES = ("whole", "multiscale", "sliding")


class Predictor:
    """Runs `model` on single images of any size with one traced graph per input rank.

    The logits come from the same `SegmentationPipeline` as the exported SavedModel's
    signatures, so what is evaluated is what ships.

    Args:
        model: a segmentation `keras.Model` returning logits [B, h, w, C] (or a dict with
            `"logits"`).
        **pipeline_options: size handling (`SegmentationPipeline`; default: the whole image
            as it is for models of any size, as the export default).
    """

    def __init__(self, model, **pipeline_options):
        self.model = model
        self.pipeline = SegmentationPipeline(model, **pipeline_options)
        channels = model.inputs[0].shape[-1]
        signature = [tf.TensorSpec([None, None, None, channels], tf.float32)]

        # reduce_retracing is not enough: images of many sizes would trace many graphs.
        @tf.function(input_signature=signature)
        def probabilities(images):
            return tf.nn.softmax(self.pipeline.logits(images), axis=-1)

        self._probabilities = probabilities

    def __call__(self, images):
        """Softmax probabilities [B, h, w, C] of raw images [B, h, w, channels]."""
        return self._probabilities(tf.cast(images, tf.float32))


def predict_whole(predictor, image):
    """Probabilities [H, W, C] of the whole image at its original resolution."""
    return predictor(tf.convert_to_tensor(image)[None])[0]


def predict_multiscale(predictor, image, scales=(0.5, 0.75, 1.0, 1.25, 1.5, 1.75), flip=True):
    """Mean probabilities over rescaled (and left-right flipped) copies of the image.

    DeepLabv3+ (Chen et al., ECCV 2018), Sec. 4.1, "multi-scale inputs ... and left-right
    flipped inputs": each copy is resized bilinearly to round(scale * size), its
    probabilities resized back to the original size (and un-flipped), then all averaged.

    Args:
        predictor: a `Predictor`.
        image: [H, W, channels] raw pixels.
        scales: sequence of positive floats.
        flip: bool, also predict on the mirrored image.
    """
    if not scales or any(s <= 0 for s in scales):
        raise ValueError(
            f"`scales` must be a non-empty sequence of positive numbers, received {scales!r}."
        )
    image = tf.cast(tf.convert_to_tensor(image), tf.float32)
    height, width = int(image.shape[0]), int(image.shape[1])
    total = None
    count = 0
    for scale in scales:
        size = (max(1, round(scale * height)), max(1, round(scale * width)))
        scaled = image[None] if size == (height, width) else resize_bilinear(image[None], size)
        copies = [(scaled, False)] + ([(tf.reverse(scaled, axis=[2]), True)] if flip else [])
        for copy, flipped in copies:
            probs = predictor(copy)
            if flipped:
                probs = tf.reverse(probs, axis=[2])
            if size != (height, width):
                probs = resize_bilinear(probs, (height, width))
            total = probs[0] if total is None else total + probs[0]
            count += 1
    return total / count


def window_starts(length, window, stride):
    """Window offsets covering [0, length): every `stride`, plus one flush with the end."""
    if length <= window:
        return [0]
    starts = list(range(0, length - window + 1, stride))
    if starts[-1] != length - window:
        starts.append(length - window)
    return starts


def predict_sliding(predictor, image, crop_size, stride=None):
    """Probabilities from overlapping crops, averaged where crops overlap.

    For images larger than the training crop: crops of `crop_size` at `window_starts`
    offsets (stride defaults to 2/3 of the crop); each pixel's probabilities are the mean
    over the crops containing it. Sides shorter than the crop are zero-padded at the
    bottom/right for prediction and cropped back.

    Args:
        predictor: a `Predictor`.
        image: [H, W, channels] raw pixels.
        crop_size: (crop_height, crop_width).
        stride: (stride_height, stride_width) or None.
    """
    crop_h, crop_w = (int(v) for v in crop_size)
    if stride is None:
        stride = (max(1, math.ceil(crop_h * 2 / 3)), max(1, math.ceil(crop_w * 2 / 3)))
    stride_h, stride_w = (int(v) for v in stride)
    if min(crop_h, crop_w, stride_h, stride_w) < 1:
        raise ValueError(
            f"`crop_size` and `stride` must be positive, received {crop_size!r} and {stride!r}."
        )
    image = tf.cast(tf.convert_to_tensor(image), tf.float32)
    height, width = int(image.shape[0]), int(image.shape[1])
    pad_h, pad_w = max(crop_h - height, 0), max(crop_w - width, 0)
    padded = tf.pad(image, [[0, pad_h], [0, pad_w], [0, 0]])
    full_h, full_w = height + pad_h, width + pad_w
    total = None
    counts = np.zeros((full_h, full_w, 1), np.float32)
    for top in window_starts(full_h, crop_h, stride_h):
        for left in window_starts(full_w, crop_w, stride_w):
            probs = predictor(padded[None, top : top + crop_h, left : left + crop_w])[0].numpy()
            if total is None:
                total = np.zeros((full_h, full_w, probs.shape[-1]), np.float32)
            total[top : top + crop_h, left : left + crop_w] += probs
            counts[top : top + crop_h, left : left + crop_w] += 1.0
    return tf.constant((total / counts)[:height, :width])
