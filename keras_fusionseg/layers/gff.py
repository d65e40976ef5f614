"""GFF paper blocks: pyramid pooling (PSPNet), gated fully fusion, dense feature pyramid.

Li, Zhao, Han, Tong, Tan, Yang, "Gated Fully Fusion for Semantic Segmentation", AAAI 2020
(GFF, eq. 5 and eq. 6), built on the pyramid pooling module of Zhao, Shi, Qi, Wang, Jia,
"Pyramid Scene Parsing Network", CVPR 2017 (PSPNet, Sec. 3.2).
"""

import keras
import tensorflow as tf

from keras_fusionseg.layers.common import (
    HEAD_BN_EPSILON,
    HEAD_BN_MOMENTUM,
    PACKAGE,
    ConvBNReLU,
    check_positive_int,
    resize_bilinear,
    static_or_dynamic_hw,
)


def _check_bins(bins):
    if (
        not isinstance(bins, list | tuple)
        or not bins
        or not all(isinstance(b, int) and not isinstance(b, bool) and b >= 1 for b in bins)
    ):
        raise ValueError(
            f"`bins` must be a non-empty list of positive integers (e.g. (1, 2, 3, 6)), received {bins!r}."
        )
    return tuple(bins)


def _check_feature_list(layer, input_shape, min_levels):
    if not isinstance(input_shape, list | tuple) or len(input_shape) < min_levels:
        raise ValueError(
            f"{layer} expects a list of at least {min_levels} feature maps, received {input_shape!r}."
        )
    for shape in input_shape:
        if not isinstance(shape, list | tuple) or len(shape) != 4 or shape[-1] is None:
            raise ValueError(
                f"{layer} expects NHWC feature maps with a known channel count, received {input_shape!r}."
            )


def _adaptive_pooling_matrix(size, bins, dtype):
    """(bins, size) averaging matrix of adaptive average pooling along one axis.

    Bin i covers [floor(i * size / bins), ceil((i + 1) * size / bins)), as adaptive average
    pooling does in the PSPNet reference; built from the run-time size so that the pooling
    works on unknown heights and widths (Keras pooling layers need a static pool size).
    """
    size = tf.cast(size, tf.int32)
    index = tf.range(bins, dtype=tf.int32)
    start = (index * size) // bins
    end = ((index + 1) * size + bins - 1) // bins
    positions = tf.range(size, dtype=tf.int32)[None, :]
    inside = tf.logical_and(positions >= start[:, None], positions < end[:, None])
    weights = tf.cast(inside, dtype) / tf.cast(end - start, dtype)[:, None]
    return weights


def adaptive_average_pool(x, bins):
    """Adaptive average pooling of NHWC `x` to (batch, bins, bins, C) for any input size."""
    height, width = static_or_dynamic_hw(x)
    rows = _adaptive_pooling_matrix(height, bins, x.dtype)
    cols = _adaptive_pooling_matrix(width, bins, x.dtype)
    pooled_rows = tf.einsum("ih,bhwc->biwc", rows, x)
    return tf.einsum("jw,biwc->bijc", cols, pooled_rows)


@keras.saving.register_keras_serializable(package=PACKAGE)
class PyramidPooling(keras.layers.Layer):
    """Pyramid pooling module: pooled context at several grid sizes, concatenated to the input.

    PSPNet (Zhao et al., CVPR 2017) Sec. 3.2 and Fig. 3(c), the context module on top of
    the GFF network (GFF, AAAI 2020, Fig. 3(a)). For each bin count b the input is average
    pooled adaptively to b x b, reduced by a 1x1 conv (no bias) to `reduction_filters`
    channels with BN and ReLU, and resized back bilinearly; the output is the concatenation
    [input, branch_1, ..., branch_n] with C + n * reduction_filters channels. Works on
    unknown height and width: pooling regions follow the run-time size.

    Args:
        bins: tuple of int, pooled grid sizes (PSPNet: 1, 2, 3, 6).
        reduction_filters: int or None, channels per branch; None -> input channels // len(bins).
        bn_momentum, bn_epsilon: float, batch-norm settings.

    Example:
    >>> import numpy as np
    >>> y = PyramidPooling()(np.zeros((1, 8, 8, 16), "float32"))
    >>> tuple(y.shape)
    (1, 8, 8, 32)
    """

    def __init__(
        self,
        bins=(1, 2, 3, 6),
        reduction_filters=None,
        bn_momentum=HEAD_BN_MOMENTUM,
        bn_epsilon=HEAD_BN_EPSILON,
        **kwargs,
    ):
        super().__init__(**kwargs)
        self.bins = _check_bins(bins)
        if reduction_filters is not None:
            check_positive_int("reduction_filters", reduction_filters)
        self.reduction_filters = reduction_filters
        self.bn_momentum = bn_momentum
        self.bn_epsilon = bn_epsilon
        self.branches = []

    def build(self, input_shape):
        if len(input_shape) != 4 or input_shape[-1] is None:
            raise ValueError(
                f"PyramidPooling expects an NHWC input with known channels, received {input_shape!r}."
            )
        channels = input_shape[-1]
        filters = self.reduction_filters or max(1, channels // len(self.bins))
        self.branch_filters = filters
        self.branches = [
            ConvBNReLU(
                filters,
                1,
                bn_momentum=self.bn_momentum,
                bn_epsilon=self.bn_epsilon,
                name=f"pool_{bins}x{bins}",
            )
            for bins in self.bins
        ]
        for bins, branch in zip(self.bins, self.branches, strict=True):
            branch.build((input_shape[0], bins, bins, channels))

    def call(self, x, training=None):
        size = static_or_dynamic_hw(x)
        outputs = [x]
        for bins, branch in zip(self.bins, self.branches, strict=True):
            pooled = branch(adaptive_average_pool(x, bins), training=training)
            outputs.append(resize_bilinear(pooled, size))
        return tf.concat(outputs, axis=-1)

    def compute_output_shape(self, input_shape):
        channels = input_shape[-1]
        filters = self.reduction_filters or max(1, channels // len(self.bins))
        return (*input_shape[:3], channels + filters * len(self.bins))

    def get_config(self):
        return {
            **super().get_config(),
            "bins": self.bins,
            "reduction_filters": self.reduction_filters,
            "bn_momentum": self.bn_momentum,
            "bn_epsilon": self.bn_epsilon,
        }


@keras.saving.register_keras_serializable(package=PACKAGE)
class GatedFullyFusion(keras.layers.Layer):
    """Gated fully fusion of L feature levels: every level receives gated features of all others.

    GFF (Li et al., AAAI 2020) Sec. "Gated Fully Fusion", eq. 5 and Fig. 2:
    G_l = sigmoid(w_l * X_l) (1x1 conv, w_l in R^{1x1xC}, no bias; `use_bias=True` adds the
    released code's bias b_l) and
    X~_l = (1 + G_l) * X_l + (1 - G_l) * sum_{i != l} G_i * X_i,
    where each product G_i * X_i is resized bilinearly to level l's size. Inputs must
    already share one channel count (the GFF network reduces every level to 256 channels
    with 1x1 conv-BN-ReLU first).

    Two choices separate the paper from the authors' released code; the defaults follow
    the paper:
    - `per_channel_gates=False`: one gate channel per level (eq. 5, w_l in R^{1x1xC});
      True: one gate per feature channel (released code).
    - `sequential=False`: every X~_l is computed from the inputs at once (eq. 5);
      True: levels are updated in turn from the first, later levels receiving the already
      fused maps of earlier ones (released code); the gates come from the inputs either way.

    Returns a tuple `(fused, gates)`: the list of X~_l and the list of gate maps G_l
    (each (batch, H_l, W_l, 1 or C), values in [0, 1]), for visualisation as in Fig. 6/7.

    Args:
        per_channel_gates: bool, see above.
        sequential: bool, see above.
        use_bias: bool, bias in the gate convs (False: eq. 5; True: released code).

    Example:
    >>> import numpy as np
    >>> levels = [np.zeros((1, 16, 16, 8), "float32"), np.zeros((1, 8, 8, 8), "float32")]
    >>> fused, gates = GatedFullyFusion()(levels)
    >>> [tuple(f.shape) for f in fused], [tuple(g.shape) for g in gates]
    ([(1, 16, 16, 8), (1, 8, 8, 8)], [(1, 16, 16, 1), (1, 8, 8, 1)])
    """

    def __init__(self, per_channel_gates=False, sequential=False, use_bias=False, **kwargs):
        super().__init__(**kwargs)
        for name, value in (
            ("per_channel_gates", per_channel_gates),
            ("sequential", sequential),
            ("use_bias", use_bias),
        ):
            if not isinstance(value, bool):
                raise ValueError(f"`{name}` must be a bool, received {value!r}.")
        self.per_channel_gates = per_channel_gates
        self.sequential = sequential
        self.use_bias = use_bias
        self.gate_convs = []

    def build(self, input_shape):
        _check_feature_list("GatedFullyFusion", input_shape, 2)
        channels = {shape[-1] for shape in input_shape}
        if len(channels) != 1:
            raise ValueError(
                "GatedFullyFusion expects feature maps with one channel count (reduce them "
                f"first), received channels {[shape[-1] for shape in input_shape]}."
            )
        channels = channels.pop()
        gate_channels = channels if self.per_channel_gates else 1
        self.gate_convs = [
            keras.layers.Conv2D(gate_channels, 1, use_bias=self.use_bias, name=f"gate_{level + 1}")
            for level in range(len(input_shape))
        ]
        for conv, shape in zip(self.gate_convs, input_shape, strict=True):
            conv.build(shape)

    def call(self, inputs):
        inputs = list(inputs)
        gates = [tf.sigmoid(conv(x)) for conv, x in zip(self.gate_convs, inputs, strict=True)]
        features = list(inputs)
        fused = []
        for level, x_l in enumerate(inputs):
            size = static_or_dynamic_hw(x_l)
            received = 0.0
            for other, (g_i, x_i) in enumerate(zip(gates, features, strict=True)):
                if other != level:
                    received = received + resize_bilinear(g_i * x_i, size)
            g_l = gates[level]
            x_new = (1.0 + g_l) * x_l + (1.0 - g_l) * received
            fused.append(x_new)
            if self.sequential:
                features[level] = x_new
        return fused, gates

    def compute_output_shape(self, input_shape):
        gate_channels = input_shape[0][-1] if self.per_channel_gates else 1
        fused = [tuple(shape) for shape in input_shape]
        gates = [(*shape[:3], gate_channels) for shape in input_shape]
        return fused, gates

    def get_config(self):
        return {
            **super().get_config(),
            "per_channel_gates": self.per_channel_gates,
            "sequential": self.sequential,
            "use_bias": self.use_bias,
        }

    @classmethod
    def from_config(cls, config):
        # Files saved before the flag existed have biased gates.
        return cls(**{"use_bias": True, **config})


@keras.saving.register_keras_serializable(package=PACKAGE)
class DenseFeaturePyramid(keras.layers.Layer):
    """Dense feature pyramid: context densely reused top-down by every pyramid level.

    GFF (Li et al., AAAI 2020) Sec. "Dense Feature Pyramid", eq. 6:
    y_i = H_i([y_0, X~_1, ..., X~_{i-1}]) for i = 1..L+1, where y_0 is the context map
    (PSP output), X~_1..X~_L are the GFF outputs ordered top-down (deepest level first,
    as the pyramid is built "in a top-down manner starting from the PSPNet output"), and
    H_i is a single conv-BN-ReLU. Taking i up to L+1 keeps eq. 6 literally while every
    GFF level enters the pyramid. The inputs of H_i are resized bilinearly to the size of
    the last of them (the finest, in top-down order), and all y_i are resized to the finest
    size and concatenated "for final semantic segmentation".

    Inputs: list `[y_0, X~_1, ..., X~_L]`. Output: concatenation of y_1..y_{L+1},
    (batch, H_finest, W_finest, (L + 1) * filters).

    Args:
        filters: int, channels of each y_i.
        kernel_size: int, kernel of each H_i (the paper says "a single convolution layer";
            1 by default, as `gffnet`; 3 is the other reading).
        bn_momentum, bn_epsilon: float, batch-norm settings.

    Example:
    >>> import numpy as np
    >>> context = np.zeros((1, 8, 8, 12), "float32")
    >>> levels = [np.zeros((1, 8, 8, 6), "float32"), np.zeros((1, 16, 16, 6), "float32")]
    >>> tuple(DenseFeaturePyramid(filters=4)([context, *levels]).shape)
    (1, 16, 16, 12)
    """

    def __init__(
        self,
        filters=256,
        kernel_size=1,
        bn_momentum=HEAD_BN_MOMENTUM,
        bn_epsilon=HEAD_BN_EPSILON,
        **kwargs,
    ):
        super().__init__(**kwargs)
        check_positive_int("filters", filters)
        check_positive_int("kernel_size", kernel_size)
        self.filters = filters
        self.kernel_size = kernel_size
        self.bn_momentum = bn_momentum
        self.bn_epsilon = bn_epsilon
        self.fusions = []

    def build(self, input_shape):
        _check_feature_list("DenseFeaturePyramid", input_shape, 2)
        self.fusions = []
        for i in range(1, len(input_shape) + 1):
            members = input_shape[:i]
            channels = sum(shape[-1] for shape in members)
            fusion = ConvBNReLU(
                self.filters,
                self.kernel_size,
                bn_momentum=self.bn_momentum,
                bn_epsilon=self.bn_epsilon,
                name=f"dense_fusion_{i}",
            )
            fusion.build((*members[-1][:3], channels))
            self.fusions.append(fusion)

    def call(self, inputs, training=None):
        inputs = list(inputs)
        pyramid = []
        for i, fusion in enumerate(self.fusions, start=1):
            members = inputs[:i]
            size = static_or_dynamic_hw(members[-1])
            stacked = tf.concat(
                [m if m is members[-1] else resize_bilinear(m, size) for m in members], axis=-1
            )
            pyramid.append(fusion(stacked, training=training))
        size = static_or_dynamic_hw(pyramid[-1])
        pyramid = [y if y is pyramid[-1] else resize_bilinear(y, size) for y in pyramid]
        return tf.concat(pyramid, axis=-1)

    def compute_output_shape(self, input_shape):
        return (*input_shape[-1][:3], self.filters * len(input_shape))

    def get_config(self):
        return {
            **super().get_config(),
            "filters": self.filters,
            "kernel_size": self.kernel_size,
            "bn_momentum": self.bn_momentum,
            "bn_epsilon": self.bn_epsilon,
        }
