"""FastFCN blocks: Joint Pyramid Upsampling and the EncNet context encoding head.

Wu, Zhang, Huang, Liang, Yu, "FastFCN: Rethinking Dilated Convolution in the Backbone for
Semantic Segmentation", arXiv 2019 (JPU, Sec. 3.3 and Fig. 4); the context encoding module
of Zhang, Dana, Shi, Zhang, Wang, Tyagi, Agrawal, "Context Encoding for Semantic
Segmentation", CVPR 2018 (EncNet, Sec. 3.1-3.2), the head FastFCN puts after JPU.
"""

import math

import keras
import tensorflow as tf

from keras_fusionseg.layers.common import (
    HEAD_BN_EPSILON,
    HEAD_BN_MOMENTUM,
    PACKAGE,
    ConvBNReLU,
    SeparableConvBN,
    check_positive_int,
    resize_bilinear,
    static_or_dynamic_hw,
)


@keras.saving.register_keras_serializable(package=PACKAGE)
class JointPyramidUpsampling(keras.layers.Layer):
    """Joint Pyramid Upsampling: stride-8 features from the stride-8/16/32 stages of a plain FCN.

    FastFCN (Wu et al., arXiv 2019) Sec. 3.3.3 and Fig. 4: (a) each input gets a 3x3 conv
    (no bias) to `width` channels with BN and ReLU; (b) the maps are resized bilinearly to
    the size of the first (finest) input and concatenated; four parallel separable convs
    (depthwise 3x3 dilated 1/2/4/8 -> BN -> pointwise to `width` -> BN -> ReLU) read the
    concatenation, and their outputs are concatenated to 4 * `width` channels (2048 for the
    reference width 512), the input of the segmentation head.

    Inputs: list of feature maps, finest first (FastFCN: Conv3, Conv4, Conv5).

    Args:
        width: int, channels of every conv (reference: 512).
        dilation_rates: tuple of int, one separable conv per rate (reference: 1, 2, 4, 8).
        bn_momentum, bn_epsilon: float, batch-norm settings.

    Example:
    >>> import numpy as np
    >>> feats = [np.zeros((1, 16, 16, 8), "float32"), np.zeros((1, 8, 8, 16), "float32"),
    ...          np.zeros((1, 4, 4, 32), "float32")]
    >>> tuple(JointPyramidUpsampling(width=4)(feats).shape)
    (1, 16, 16, 16)
    """

    def __init__(
        self,
        width=512,
        dilation_rates=(1, 2, 4, 8),
        bn_momentum=HEAD_BN_MOMENTUM,
        bn_epsilon=HEAD_BN_EPSILON,
        **kwargs,
    ):
        super().__init__(**kwargs)
        check_positive_int("width", width)
        if (
            not isinstance(dilation_rates, list | tuple)
            or not dilation_rates
            or not all(
                isinstance(r, int) and not isinstance(r, bool) and r >= 1 for r in dilation_rates
            )
        ):
            raise ValueError(
                "`dilation_rates` must be a non-empty list of positive integers (e.g. "
                f"(1, 2, 4, 8)), received {dilation_rates!r}."
            )
        self.width = width
        self.dilation_rates = tuple(dilation_rates)
        self.bn_momentum = bn_momentum
        self.bn_epsilon = bn_epsilon
        self.input_convs = []
        self.dilated_convs = [
            SeparableConvBN(
                width,
                3,
                dilation_rate=rate,
                depth_activation=False,
                bn_momentum=bn_momentum,
                bn_epsilon=bn_epsilon,
                name=f"separable_dilation_{rate}",
            )
            for rate in self.dilation_rates
        ]

    def build(self, input_shape):
        if (
            not isinstance(input_shape, list | tuple)
            or len(input_shape) < 2
            or any(
                not isinstance(s, list | tuple) or len(s) != 4 or s[-1] is None for s in input_shape
            )
        ):
            raise ValueError(
                "JointPyramidUpsampling expects a list of at least 2 NHWC feature maps with "
                f"known channels, finest first; received {input_shape!r}."
            )
        self.input_convs = [
            ConvBNReLU(
                self.width,
                3,
                bn_momentum=self.bn_momentum,
                bn_epsilon=self.bn_epsilon,
                name=f"input_conv_{level}",
            )
            for level in range(len(input_shape))
        ]
        for conv, shape in zip(self.input_convs, input_shape, strict=True):
            conv.build(shape)
        concat_shape = (*input_shape[0][:3], self.width * len(input_shape))
        for conv in self.dilated_convs:
            conv.build(concat_shape)

    def call(self, inputs, training=None):
        inputs = list(inputs)
        embedded = [
            conv(x, training=training) for conv, x in zip(self.input_convs, inputs, strict=True)
        ]
        size = static_or_dynamic_hw(embedded[0])
        joined = tf.concat(
            [embedded[0]] + [resize_bilinear(y, size) for y in embedded[1:]], axis=-1
        )
        branches = [tf.nn.relu(conv(joined, training=training)) for conv in self.dilated_convs]
        return tf.concat(branches, axis=-1)

    def compute_output_shape(self, input_shape):
        return (*input_shape[0][:3], self.width * len(self.dilation_rates))

    def get_config(self):
        return {
            **super().get_config(),
            "width": self.width,
            "dilation_rates": self.dilation_rates,
            "bn_momentum": self.bn_momentum,
            "bn_epsilon": self.bn_epsilon,
        }


@keras.saving.register_keras_serializable(package=PACKAGE)
class ContextEncoding(keras.layers.Layer):
    """Context encoding module: codeword encoding, channel attention and the SE-loss branch.

    EncNet (Zhang et al., CVPR 2018) Sec. 3.1-3.2 and Fig. 2, as used after JPU by FastFCN.
    Encoding branch: a 1x1 conv-BN-ReLU gives the N = H*W feature vectors x_i; with K
    learnable codewords d_k and smoothing factors s_k (eq. 1-2):
    a_ik = softmax_k(s_k * ||x_i - d_k||^2) (s_k starts negative), e_k = sum_i a_ik (x_i - d_k);
    then BN over the K codewords, ReLU, and the mean over k gives the encoded vector e.
    Channel attention (Sec. 3.2): gamma = sigmoid(W e + b) scales the module's *input* u, not
    the projected features: output relu(u + u * gamma), as in the EncNet/FastFCN reference,
    where the 1x1 conv belongs to the encoding branch only.
    The SE-loss branch (Sec. 3.2, "semantic encoding loss") is a dense layer from e to
    `num_classes` class-presence logits.

    Returns `(features, presence_logits)` when `num_classes` is set, else `features`.

    Args:
        num_codes: int, K codewords (EncNet/FastFCN: 32).
        num_classes: int or None, classes of the SE-loss branch; None -> no branch.
        bn_momentum, bn_epsilon: float, batch-norm settings.

    Example:
    >>> import numpy as np
    >>> y, se = ContextEncoding(num_codes=4, num_classes=3)(np.zeros((2, 8, 8, 16), "float32"))
    >>> tuple(y.shape), tuple(se.shape)
    ((2, 8, 8, 16), (2, 3))
    """

    def __init__(
        self,
        num_codes=32,
        num_classes=None,
        bn_momentum=HEAD_BN_MOMENTUM,
        bn_epsilon=HEAD_BN_EPSILON,
        **kwargs,
    ):
        super().__init__(**kwargs)
        check_positive_int("num_codes", num_codes)
        if num_classes is not None:
            check_positive_int("num_classes", num_classes)
        self.num_codes = num_codes
        self.num_classes = num_classes
        self.bn_momentum = bn_momentum
        self.bn_epsilon = bn_epsilon

    def build(self, input_shape):
        if len(input_shape) != 4 or input_shape[-1] is None:
            raise ValueError(
                f"ContextEncoding expects an NHWC input with known channels, received {input_shape!r}."
            )
        channels = input_shape[-1]
        self.channels = channels
        self.projection = ConvBNReLU(
            channels,
            1,
            bn_momentum=self.bn_momentum,
            bn_epsilon=self.bn_epsilon,
            name="projection",
        )
        self.projection.build(input_shape)
        bound = 1.0 / math.sqrt(self.num_codes * channels)
        self.codewords = self.add_weight(
            name="codewords",
            shape=(self.num_codes, channels),
            initializer=keras.initializers.RandomUniform(-bound, bound),
        )
        self.smoothing_factors = self.add_weight(
            name="smoothing_factors",
            shape=(self.num_codes,),
            initializer=keras.initializers.RandomUniform(-1.0, 0.0),
        )
        # Batch norm over the codeword axis of (batch, K, C), as EncNet's BatchNorm1d(K).
        self.encoding_bn = keras.layers.BatchNormalization(
            axis=1, momentum=self.bn_momentum, epsilon=self.bn_epsilon, name="encoding_bn"
        )
        self.encoding_bn.build((input_shape[0], self.num_codes, channels))
        self.attention = keras.layers.Dense(channels, activation="sigmoid", name="attention")
        self.attention.build((input_shape[0], channels))
        self.presence = None
        if self.num_classes is not None:
            self.presence = keras.layers.Dense(self.num_classes, name="presence")
            self.presence.build((input_shape[0], channels))

    def encode(self, x):
        """Aggregated residual encoding (batch, K, C) of NHWC `x` (EncNet eq. 1-2)."""
        batch = tf.shape(x)[0]
        vectors = tf.reshape(x, (batch, -1, self.channels))  # (B, N, C)
        codewords = tf.cast(self.codewords, x.dtype)
        smoothing = tf.cast(self.smoothing_factors, x.dtype)
        # ||x_i - d_k||^2 = ||x_i||^2 - 2 x_i.d_k + ||d_k||^2, without the (B, N, K, C) tensor.
        distances = (
            tf.reduce_sum(tf.square(vectors), axis=-1, keepdims=True)
            - 2.0 * tf.einsum("bnc,kc->bnk", vectors, codewords)
            + tf.reduce_sum(tf.square(codewords), axis=-1)[None, None, :]
        )
        assignment = tf.nn.softmax(distances * smoothing, axis=-1)  # (B, N, K)
        # e_k = sum_i a_ik x_i - (sum_i a_ik) d_k
        weighted = tf.einsum("bnk,bnc->bkc", assignment, vectors)
        mass = tf.reduce_sum(assignment, axis=1)[:, :, None]
        return weighted - mass * codewords[None]

    def call(self, x, training=None):
        encoded = self.encode(self.projection(x, training=training))
        encoded = tf.nn.relu(self.encoding_bn(encoded, training=training))
        encoded = tf.reduce_mean(encoded, axis=1)  # (B, C)
        gamma = self.attention(encoded)[:, None, None, :]
        features = tf.nn.relu(x + x * gamma)
        if self.presence is None:
            return features
        return features, self.presence(encoded)

    def compute_output_shape(self, input_shape):
        if self.num_classes is None:
            return tuple(input_shape)
        return tuple(input_shape), (input_shape[0], self.num_classes)

    def get_config(self):
        return {
            **super().get_config(),
            "num_codes": self.num_codes,
            "num_classes": self.num_classes,
            "bn_momentum": self.bn_momentum,
            "bn_epsilon": self.bn_epsilon,
        }
