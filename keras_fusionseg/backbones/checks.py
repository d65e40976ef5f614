"""Argument checks and model assembly shared by the backbone builders."""

import keras

from keras_fusionseg.layers.common import PACKAGE, ImageNormalization


def check_int_tuple(name, value, length=None):
    """Returns `value` as a tuple of positive ints, or raises a ValueError naming `name`."""
    ok = isinstance(value, list | tuple) and all(
        isinstance(v, int) and not isinstance(v, bool) and v >= 1 for v in value
    )
    if not ok or (length is not None and len(value) != length):
        size = f"{length} " if length is not None else ""
        raise ValueError(
            f"`{name}` must be a tuple of {size}positive integers, received {value!r}."
        )
    return tuple(value)


def check_input_shape(input_shape, normalization):
    """Validates (H, W, C) and that the normalisation suits the channel count."""
    if not isinstance(input_shape, list | tuple) or len(input_shape) != 3:
        raise ValueError(
            f"`input_shape` must be (height, width, channels), received {input_shape!r}."
        )
    channels = input_shape[-1]
    if not isinstance(channels, int) or channels < 1:
        raise ValueError(
            f"`input_shape` must have a known positive channel count, received {input_shape!r}."
        )
    if normalization not in ImageNormalization.MODES:
        raise ValueError(
            f"`normalization` must be one of {list(ImageNormalization.MODES)}, "
            f"received {normalization!r}."
        )
    if channels != 3 and normalization in ("caffe", "torch"):
        raise ValueError(
            f"`normalization={normalization!r}` needs 3-channel RGB input, received "
            f"input_shape={tuple(input_shape)!r}; use 'tf' or 'none' for {channels} channel(s)."
        )


def l2_regularizer(weight_decay):
    """Keras L2 (wd * sum(w**2)) for conv kernels, or None when `weight_decay` is 0."""
    if not isinstance(weight_decay, int | float) or isinstance(weight_decay, bool):
        raise ValueError(f"`weight_decay` must be a float >= 0, received {weight_decay!r}.")
    if weight_decay < 0:
        raise ValueError(f"`weight_decay` must be a float >= 0, received {weight_decay!r}.")
    return keras.regularizers.L2(weight_decay) if weight_decay else None


def pyramid_model(inputs, pyramid, output_stride, name):
    """Functional model with dict outputs `pyramid` and the registry's attributes."""
    return PyramidBackbone(inputs, pyramid, output_stride=output_stride, name=name)


@keras.saving.register_keras_serializable(package=PACKAGE)
class PyramidBackbone(keras.Model):
    """A functional backbone (dict of pyramid levels out) whose `pyramid_outputs`,
    `pyramid_channels` and `output_stride` survive a `.keras` save/load, so wrappers that read
    them after loading (keras-hub's `DeepLabV3ImageSegmenter`) rebuild."""

    def __init__(self, inputs, outputs, name=None, **kwargs):
        output_stride = kwargs.pop("output_stride", None)
        super().__init__(inputs=inputs, outputs=outputs, name=name, **kwargs)
        self.pyramid_outputs = dict(outputs)
        self.pyramid_channels = {key: int(t.shape[-1]) for key, t in outputs.items()}
        self.output_stride = output_stride

    def get_config(self):
        return {**super().get_config(), "output_stride": self.output_stride}
