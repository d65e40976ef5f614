"""Building blocks shared by every paper: conv-BN-ReLU, separable conv, resizing.

Resizing uses `tf.image.resize` with a target size read from a tensor at run time, so
models work on inputs of unknown height and width, export to SavedModel and convert to
TFLite. (`keras.layers.UpSampling2D(interpolation="bilinear")` and `keras.ops.image.resize`
need static sizes; antialiased resizing has no TFLite kernel.)
"""

import keras
import tensorflow as tf

from keras_fusionseg.checks import check_positive_int  # noqa: F401  (re-exported)
from keras_fusionseg.layers.atrous import (  # noqa: F401  (re-exported: shared building blocks)
    AtrousConv2D,
    AtrousDepthwiseConv2D,
    native_dilated_convs,
)

PACKAGE = "keras_fusionseg"

BN_MOMENTUM = 0.9997
BN_EPSILON = 1e-3

# Batch norm of the heads (PSPNet, GFF, EncNet / FastFCN and DeepLab's ASPP and decoder): the
# PyTorch references use momentum 0.1 (Keras 0.9) and epsilon 1e-5, as does DeepLab's head
# (1e-3 stays in Xception).
HEAD_BN_MOMENTUM = 0.9
HEAD_BN_EPSILON = 1e-5


def _check_choice(name, value, allowed):
    if value not in allowed:
        raise ValueError(f"`{name}` must be one of {sorted(allowed)}, received {value!r}.")


def static_or_dynamic_hw(x):
    """Returns (height, width) of an NHWC tensor, static where known, else dynamic."""
    static = x.shape[1:3]
    dynamic = tf.shape(x)[1:3]
    return [static[i] if static[i] is not None else dynamic[i] for i in range(2)]


def resize_bilinear(x, size):
    """Bilinear resize (half-pixel centres, no antialiasing) keeping the input dtype."""
    y = tf.image.resize(x, size, method="bilinear")
    return tf.cast(y, x.dtype)


@keras.saving.register_keras_serializable(package=PACKAGE)
class ResizeToReference(keras.layers.Layer):
    """Resizes `inputs[0]` to the height and width of `inputs[1]` (bilinear or nearest).

    Used wherever a decoder brings a coarse map to a finer one (e.g. DeepLabv3+ Sec. 3.1,
    "upsampled by a factor of 4"), with sizes read at run time.

    Args:
        interpolation: str, `"bilinear"` or `"nearest"`.

    Example:
    >>> import numpy as np
    >>> y = ResizeToReference()([np.zeros((1, 4, 4, 2)), np.zeros((1, 16, 16, 1))])
    >>> tuple(y.shape)
    (1, 16, 16, 2)
    """

    def __init__(self, interpolation="bilinear", **kwargs):
        super().__init__(**kwargs)
        _check_choice("interpolation", interpolation, {"bilinear", "nearest"})
        self.interpolation = interpolation

    def call(self, inputs):
        x, reference = inputs
        size = tf.shape(reference)[1:3]
        if self.interpolation == "nearest":
            return tf.image.resize(x, size, method="nearest")
        return resize_bilinear(x, size)

    def compute_output_shape(self, input_shapes):
        x_shape, ref_shape = input_shapes
        return (x_shape[0], ref_shape[1], ref_shape[2], x_shape[3])

    def get_config(self):
        return {**super().get_config(), "interpolation": self.interpolation}


@keras.saving.register_keras_serializable(package=PACKAGE)
class ConvBNReLU(keras.layers.Layer):
    """Convolution, batch normalization and (optionally) ReLU, the unit of every head.

    Strided convolutions pad explicitly ("same" padding computed for the dilated kernel)
    and then use VALID, as the reference DeepLab code does, so that feature maps line up
    with the input pixel grid whatever the input size is.

    Args:
        filters: int, output channels.
        kernel_size: int or (int, int).
        strides: int.
        dilation_rate: int.
        use_bias: bool, conv bias (off by default: BN follows).
        activation: str or None, applied after BN.
        use_bn: bool.
        kernel_regularizer: optional Keras regularizer for the conv kernel.
        bn_momentum, bn_epsilon: float, batch-norm settings.
    """

    def __init__(
        self,
        filters,
        kernel_size=3,
        strides=1,
        dilation_rate=1,
        use_bias=False,
        activation="relu",
        use_bn=True,
        kernel_regularizer=None,
        bn_momentum=BN_MOMENTUM,
        bn_epsilon=BN_EPSILON,
        **kwargs,
    ):
        super().__init__(**kwargs)
        check_positive_int("filters", filters)
        if strides > 1 and dilation_rate > 1:
            raise ValueError(
                f"`strides` and `dilation_rate` cannot both exceed 1, received {strides} and {dilation_rate}."
            )
        self.filters = filters
        self.kernel_size = (
            tuple(kernel_size)
            if isinstance(kernel_size, list | tuple)
            else (kernel_size, kernel_size)
        )
        self.strides = strides
        self.dilation_rate = dilation_rate
        self.use_bias = use_bias
        self.activation = activation
        self.use_bn = use_bn
        self.kernel_regularizer = keras.regularizers.get(kernel_regularizer)
        self.bn_momentum = bn_momentum
        self.bn_epsilon = bn_epsilon
        pad = self.strides > 1
        self.pad = None
        if pad:
            self.pad = keras.layers.ZeroPadding2D(_same_padding(self.kernel_size, dilation_rate))
        self.conv = AtrousConv2D(
            filters,
            self.kernel_size,
            strides=strides,
            dilation_rate=dilation_rate,
            padding="valid" if pad else "same",
            use_bias=use_bias,
            kernel_regularizer=self.kernel_regularizer,
            name="conv",
        )
        self.bn = (
            keras.layers.BatchNormalization(momentum=bn_momentum, epsilon=bn_epsilon, name="bn")
            if use_bn
            else None
        )
        self.act = keras.layers.Activation(activation) if activation else None

    def build(self, input_shape):
        shape = input_shape
        if self.pad is not None:
            self.pad.build(shape)
            shape = self.pad.compute_output_shape(shape)
        self.conv.build(shape)
        if self.bn is not None:
            self.bn.build(self.conv.compute_output_shape(shape))

    def call(self, x, training=None):
        if self.pad is not None:
            x = self.pad(x)
        x = self.conv(x)
        if self.bn is not None:
            x = self.bn(x, training=training)
        if self.act is not None:
            x = self.act(x)
        return x

    def compute_output_shape(self, input_shape):
        shape = input_shape
        if self.pad is not None:
            shape = self.pad.compute_output_shape(shape)
        return self.conv.compute_output_shape(shape)

    def get_config(self):
        return {
            **super().get_config(),
            "filters": self.filters,
            "kernel_size": self.kernel_size,
            "strides": self.strides,
            "dilation_rate": self.dilation_rate,
            "use_bias": self.use_bias,
            "activation": self.activation,
            "use_bn": self.use_bn,
            "kernel_regularizer": keras.regularizers.serialize(self.kernel_regularizer),
            "bn_momentum": self.bn_momentum,
            "bn_epsilon": self.bn_epsilon,
        }


@keras.saving.register_keras_serializable(package=PACKAGE)
class SeparableConvBN(keras.layers.Layer):
    """Atrous separable convolution: depthwise 3x3 -> BN -> pointwise 1x1 -> BN.

    DeepLabv3+ Sec. 3.2 ("extra batch normalization and ReLU activation are added after
    each 3x3 depthwise convolution"). With `depth_activation=True` ReLU follows each BN
    (the last Xception exit block and the separable ASPP/decoder convs); otherwise ReLU
    is applied before the depthwise conv when `pre_activation=True` (the other Xception
    blocks) and not at all after.

    Args:
        filters: int, pointwise output channels.
        kernel_size: int, depthwise kernel size.
        strides: int.
        dilation_rate: int.
        depth_activation: bool, ReLU after both BNs.
        pre_activation: bool, ReLU before the depthwise conv.
        kernel_regularizer: optional regularizer for the pointwise kernel (depthwise
            weights are not regularised, as in the reference).
        bn_momentum, bn_epsilon: float.
        use_bn: bool; False gives both convs a bias and no BN: the inference form
            `export.optimize.fold_batch_norm` turns a trained layer into.
    """

    def __init__(
        self,
        filters,
        kernel_size=3,
        strides=1,
        dilation_rate=1,
        depth_activation=True,
        pre_activation=False,
        kernel_regularizer=None,
        bn_momentum=BN_MOMENTUM,
        bn_epsilon=BN_EPSILON,
        use_bn=True,
        **kwargs,
    ):
        super().__init__(**kwargs)
        check_positive_int("filters", filters)
        self.filters = filters
        self.kernel_size = kernel_size
        self.strides = strides
        self.dilation_rate = dilation_rate
        self.depth_activation = depth_activation
        self.pre_activation = pre_activation
        self.kernel_regularizer = keras.regularizers.get(kernel_regularizer)
        self.bn_momentum = bn_momentum
        self.bn_epsilon = bn_epsilon
        self.use_bn = use_bn
        strided = strides > 1
        self.pad = (
            keras.layers.ZeroPadding2D(_same_padding((kernel_size, kernel_size), dilation_rate))
            if strided
            else None
        )
        self.depthwise = AtrousDepthwiseConv2D(
            kernel_size,
            strides=strides,
            dilation_rate=dilation_rate,
            padding="valid" if strided else "same",
            use_bias=not use_bn,
            name="depthwise",
        )
        self.depthwise_bn = self._batch_norm("depthwise_bn")
        self.pointwise = keras.layers.Conv2D(
            filters,
            1,
            use_bias=not use_bn,
            kernel_regularizer=self.kernel_regularizer,
            name="pointwise",
        )
        self.pointwise_bn = self._batch_norm("pointwise_bn")

    def _batch_norm(self, name):
        if not self.use_bn:
            return None
        return keras.layers.BatchNormalization(
            momentum=self.bn_momentum, epsilon=self.bn_epsilon, name=name
        )

    def build(self, input_shape):
        shape = input_shape
        if self.pad is not None:
            shape = self.pad.compute_output_shape(shape)
        self.depthwise.build(shape)
        shape = self.depthwise.compute_output_shape(shape)
        self.pointwise.build(shape)
        if self.use_bn:
            self.depthwise_bn.build(shape)
            self.pointwise_bn.build(self.pointwise.compute_output_shape(shape))

    def call(self, x, training=None):
        if self.pre_activation:
            x = tf.nn.relu(x)
        if self.pad is not None:
            x = self.pad(x)
        x = self.depthwise(x)
        if self.use_bn:
            x = self.depthwise_bn(x, training=training)
        if self.depth_activation:
            x = tf.nn.relu(x)
        x = self.pointwise(x)
        if self.use_bn:
            x = self.pointwise_bn(x, training=training)
        if self.depth_activation:
            x = tf.nn.relu(x)
        return x

    def compute_output_shape(self, input_shape):
        shape = input_shape
        if self.pad is not None:
            shape = self.pad.compute_output_shape(shape)
        shape = self.depthwise.compute_output_shape(shape)
        return self.pointwise.compute_output_shape(shape)

    def get_config(self):
        return {
            **super().get_config(),
            "filters": self.filters,
            "kernel_size": self.kernel_size,
            "strides": self.strides,
            "dilation_rate": self.dilation_rate,
            "depth_activation": self.depth_activation,
            "pre_activation": self.pre_activation,
            "kernel_regularizer": keras.regularizers.serialize(self.kernel_regularizer),
            "bn_momentum": self.bn_momentum,
            "bn_epsilon": self.bn_epsilon,
            "use_bn": self.use_bn,
        }


@keras.saving.register_keras_serializable(package=PACKAGE)
class ImageNormalization(keras.layers.Layer):
    """Maps raw RGB pixels in [0, 255] to a backbone's input convention.

    Models own their normalisation so that data pipelines and exported models feed raw
    pixels. Modes: `"tf"` -> [-1, 1] (Xception, MobileNetV2, DeepLab reference);
    `"caffe"` -> RGB to BGR minus the ImageNet BGR mean (Keras Applications ResNet);
    `"torch"` -> [0, 1] minus mean over std (FastFCN reference ResNets); `"none"`.
    Grayscale (1-channel) inputs are accepted for `"tf"` and `"none"`.

    Args:
        mode: str, one of the modes above.
    """

    MODES = ("tf", "caffe", "torch", "none")

    def __init__(self, mode="tf", **kwargs):
        super().__init__(**kwargs)
        _check_choice("mode", mode, set(self.MODES))
        self.mode = mode

    def build(self, input_shape):
        channels = input_shape[-1]
        if self.mode in ("caffe", "torch") and channels != 3:
            raise ValueError(
                f"ImageNormalization mode {self.mode!r} needs 3 (RGB) input channels, "
                f"received input shape {tuple(input_shape)}; use mode 'tf' or 'none'."
            )

    def call(self, x):
        x = tf.cast(x, self.compute_dtype)
        if self.mode == "tf":
            return x / 127.5 - 1.0
        if self.mode == "caffe":
            x = x[..., ::-1]
            return x - tf.constant([103.939, 116.779, 123.68], dtype=x.dtype)
        if self.mode == "torch":
            mean = tf.constant([0.485, 0.456, 0.406], dtype=x.dtype)
            std = tf.constant([0.229, 0.224, 0.225], dtype=x.dtype)
            return (x / 255.0 - mean) / std
        return x

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        return {**super().get_config(), "mode": self.mode}


def _same_padding(kernel_size, dilation_rate):
    """Explicit (top, bottom), (left, right) padding that makes a VALID conv act like SAME."""
    pads = []
    for k in kernel_size:
        effective = k + (k - 1) * (dilation_rate - 1)
        total = effective - 1
        pads.append((total // 2, total - total // 2))
    return tuple(pads)
