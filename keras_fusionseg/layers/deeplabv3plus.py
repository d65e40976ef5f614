"""DeepLabv3+ blocks: Atrous Spatial Pyramid Pooling and the DeepLabv3+ decoder.

Chen, Zhu, Papandreou, Schroff, Adam, "Encoder-Decoder with Atrous Separable Convolution for
Semantic Image Segmentation", ECCV 2018 (DeepLabv3+); ASPP from Chen et al., "Rethinking
Atrous Convolution for Semantic Image Segmentation", arXiv 2017 (DeepLabv3), Sec. 3.3.
"""

import keras
import tensorflow as tf

from keras_fusionseg.layers.common import (
    BN_MOMENTUM,
    HEAD_BN_EPSILON,
    PACKAGE,
    ConvBNReLU,
    SeparableConvBN,
    check_positive_int,
    resize_bilinear,
    static_or_dynamic_hw,
)


def _check_rates(atrous_rates):
    if (
        not isinstance(atrous_rates, list | tuple)
        or not atrous_rates
        or not all(isinstance(r, int) and not isinstance(r, bool) and r >= 1 for r in atrous_rates)
    ):
        raise ValueError(
            "`atrous_rates` must be a non-empty list of positive integers (e.g. (6, 12, 18)), "
            f"received {atrous_rates!r}."
        )
    return tuple(atrous_rates)


def _check_rate(name, value):
    if not isinstance(value, int | float) or isinstance(value, bool) or not 0 <= value < 1:
        raise ValueError(f"`{name}` must be a float in [0, 1), received {value!r}.")


def _conv3x3(filters, dilation_rate, separable, kernel_regularizer, bn_epsilon, name):
    """3x3 conv-BN-ReLU, or the atrous separable version (DeepLabv3+ Sec. 3.2)."""
    if separable:
        return SeparableConvBN(
            filters,
            3,
            dilation_rate=dilation_rate,
            depth_activation=True,
            kernel_regularizer=kernel_regularizer,
            bn_momentum=BN_MOMENTUM,
            bn_epsilon=bn_epsilon,
            name=name,
        )
    return ConvBNReLU(
        filters,
        3,
        dilation_rate=dilation_rate,
        kernel_regularizer=kernel_regularizer,
        bn_momentum=BN_MOMENTUM,
        bn_epsilon=bn_epsilon,
        name=name,
    )


@keras.saving.register_keras_serializable(package=PACKAGE)
class ASPP(keras.layers.Layer):
    """Atrous Spatial Pyramid Pooling with image-level features.

    DeepLabv3 (arXiv 2017) Sec. 3.3 and DeepLabv3+ (ECCV 2018) Sec. 3.1/3.2: five parallel
    branches on the encoder output, concatenated in this order —
    image pooling (global average -> 1x1 conv -> BN -> ReLU -> bilinear resize back), a 1x1
    conv, and one 3x3 conv per atrous rate (atrous separable convs with `separable=True`),
    each with BN and ReLU — then a 1x1 projection with BN and ReLU and dropout.
    Works on feature maps of unknown height and width.

    Args:
        filters: int, channels of every branch and of the output (256 in the paper).
        atrous_rates: tuple of int, dilation rates of the 3x3 branches ((6, 12, 18) at output
            stride 16; double them at output stride 8).
        separable: bool, depthwise-separable 3x3 branches (DeepLabv3+ Sec. 3.2).
        dropout: float in [0, 1), dropout after the projection (0.1 in the reference).
        image_pooling: bool, include the image-level pooling branch.
        kernel_regularizer: optional Keras regularizer for conv kernels.
        bn_epsilon: float, batch-norm epsilon.

    Example:
    >>> import numpy as np
    >>> y = ASPP(filters=8, atrous_rates=(1, 2, 3))(np.zeros((1, 9, 9, 4), "float32"))
    >>> tuple(y.shape)
    (1, 9, 9, 8)
    """

    def __init__(
        self,
        filters=256,
        atrous_rates=(6, 12, 18),
        separable=False,
        dropout=0.1,
        image_pooling=True,
        kernel_regularizer=None,
        bn_epsilon=HEAD_BN_EPSILON,
        **kwargs,
    ):
        super().__init__(**kwargs)
        check_positive_int("filters", filters)
        self.atrous_rates = _check_rates(atrous_rates)
        _check_rate("dropout", dropout)
        self.filters = filters
        self.separable = bool(separable)
        self.dropout = float(dropout)
        self.image_pooling = bool(image_pooling)
        self.kernel_regularizer = keras.regularizers.get(kernel_regularizer)
        self.bn_epsilon = bn_epsilon

        def conv1x1(name):
            return ConvBNReLU(
                filters,
                1,
                kernel_regularizer=self.kernel_regularizer,
                bn_momentum=BN_MOMENTUM,
                bn_epsilon=bn_epsilon,
                name=name,
            )

        self.pooling_conv = conv1x1("image_pooling") if self.image_pooling else None
        self.conv1x1 = conv1x1("aspp0")
        self.atrous_convs = [
            _conv3x3(filters, rate, self.separable, self.kernel_regularizer, bn_epsilon, f"aspp{i}")
            for i, rate in enumerate(self.atrous_rates, start=1)
        ]
        self.projection = conv1x1("projection")
        self.dropout_layer = keras.layers.Dropout(self.dropout)

    def build(self, input_shape):
        shape = tuple(input_shape)
        if shape[-1] is None:
            raise ValueError(f"ASPP needs a known channel count, received input shape {shape}.")
        if self.pooling_conv is not None:
            self.pooling_conv.build((shape[0], 1, 1, shape[-1]))
        self.conv1x1.build(shape)
        for conv in self.atrous_convs:
            conv.build(shape)
        branches = len(self.atrous_convs) + 1 + int(self.image_pooling)
        self.projection.build(shape[:3] + (branches * self.filters,))

    def call(self, x, training=None):
        branches = []
        if self.pooling_conv is not None:
            pooled = tf.reduce_mean(x, axis=[1, 2], keepdims=True)
            pooled = self.pooling_conv(pooled, training=training)
            branches.append(resize_bilinear(pooled, static_or_dynamic_hw(x)))
        branches.append(self.conv1x1(x, training=training))
        branches.extend(conv(x, training=training) for conv in self.atrous_convs)
        y = tf.concat(branches, axis=-1)
        y = self.projection(y, training=training)
        return self.dropout_layer(y, training=training)

    def compute_output_shape(self, input_shape):
        return tuple(input_shape[:3]) + (self.filters,)

    def get_config(self):
        return {
            **super().get_config(),
            "filters": self.filters,
            "atrous_rates": list(self.atrous_rates),
            "separable": self.separable,
            "dropout": self.dropout,
            "image_pooling": self.image_pooling,
            "kernel_regularizer": keras.regularizers.serialize(self.kernel_regularizer),
            "bn_epsilon": self.bn_epsilon,
        }


@keras.saving.register_keras_serializable(package=PACKAGE)
class DeepLabV3PlusDecoder(keras.layers.Layer):
    """The DeepLabv3+ decoder: fuse encoder features with low-level features, predict logits.

    DeepLabv3+ (ECCV 2018) Sec. 3.1 and Fig. 2: the low-level features get a 1x1 conv
    (48 channels, BN, ReLU, Sec. 4.1 / Table 1); the encoder output is bilinearly resized to
    their size and concatenated before them ([encoder, low-level]); two 3x3 convs (BN, ReLU;
    atrous separable with `separable=True`, Sec. 3.2) refine the result and a 1x1 conv with
    bias predicts the logits at the low-level resolution (the model upsamples them to the
    input).

    Call it on `[encoder_features, low_level_features]`.

    Args:
        num_classes: int, logit channels.
        filters: int, width of the two 3x3 convs (256 in the paper).
        low_level_filters: int, width of the low-level 1x1 projection (48 in the paper).
        separable: bool, depthwise-separable 3x3 convs.
        kernel_regularizer: optional Keras regularizer for conv kernels.
        bn_epsilon: float, batch-norm epsilon.

    Example:
    >>> import numpy as np
    >>> decoder = DeepLabV3PlusDecoder(num_classes=3, filters=8, low_level_filters=4)
    >>> y = decoder([np.zeros((1, 4, 4, 8), "float32"), np.zeros((1, 16, 16, 6), "float32")])
    >>> tuple(y.shape)
    (1, 16, 16, 3)
    """

    def __init__(
        self,
        num_classes,
        filters=256,
        low_level_filters=48,
        separable=False,
        kernel_regularizer=None,
        bn_epsilon=HEAD_BN_EPSILON,
        **kwargs,
    ):
        super().__init__(**kwargs)
        check_positive_int("num_classes", num_classes)
        check_positive_int("filters", filters)
        check_positive_int("low_level_filters", low_level_filters)
        self.num_classes = num_classes
        self.filters = filters
        self.low_level_filters = low_level_filters
        self.separable = bool(separable)
        self.kernel_regularizer = keras.regularizers.get(kernel_regularizer)
        self.bn_epsilon = bn_epsilon

        self.low_level_projection = ConvBNReLU(
            low_level_filters,
            1,
            kernel_regularizer=self.kernel_regularizer,
            bn_momentum=BN_MOMENTUM,
            bn_epsilon=bn_epsilon,
            name="low_level_projection",
        )
        self.refine_convs = [
            _conv3x3(filters, 1, self.separable, self.kernel_regularizer, bn_epsilon, f"decoder{i}")
            for i in range(2)
        ]
        self.classifier = keras.layers.Conv2D(
            num_classes, 1, use_bias=True, kernel_regularizer=self.kernel_regularizer, name="logits"
        )

    def build(self, input_shapes):
        encoder_shape, low_shape = (tuple(s) for s in input_shapes)
        if encoder_shape[-1] is None or low_shape[-1] is None:
            raise ValueError(
                "DeepLabV3PlusDecoder needs known channel counts, received input shapes "
                f"{encoder_shape} and {low_shape}."
            )
        self.low_level_projection.build(low_shape)
        shape = low_shape[:3] + (encoder_shape[-1] + self.low_level_filters,)
        for conv in self.refine_convs:
            conv.build(shape)
            shape = shape[:3] + (self.filters,)
        self.classifier.build(shape)

    def call(self, inputs, training=None):
        encoder_features, low_level_features = inputs
        low = self.low_level_projection(low_level_features, training=training)
        encoder_features = resize_bilinear(encoder_features, static_or_dynamic_hw(low))
        y = tf.concat([encoder_features, low], axis=-1)
        for conv in self.refine_convs:
            y = conv(y, training=training)
        return self.classifier(y)

    def compute_output_shape(self, input_shapes):
        low_shape = tuple(input_shapes[1])
        return low_shape[:3] + (self.num_classes,)

    def get_config(self):
        return {
            **super().get_config(),
            "num_classes": self.num_classes,
            "filters": self.filters,
            "low_level_filters": self.low_level_filters,
            "separable": self.separable,
            "kernel_regularizer": keras.regularizers.serialize(self.kernel_regularizer),
            "bn_epsilon": self.bn_epsilon,
        }
