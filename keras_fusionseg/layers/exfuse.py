"""GCN and ExFuse blocks.

Peng, Zhang, Yu, Luo, Sun, "Large Kernel Matters -- Improve Semantic Segmentation by Global
Convolutional Network", CVPR 2017 (GCN): `GlobalConvolution`, `BoundaryRefinement`.
Zhang, Zhang, Peng, Xue, Sun, "ExFuse: Enhancing Feature Fusion for Semantic Segmentation",
ECCV 2018: `SemanticEmbeddingBranch` (Sec. 3.1, eq. 2, Fig. 4),
`ExplicitChannelResolutionEmbedding` (Sec. 3.2, Fig. 5), `DenselyAdjacentPrediction`
(Sec. 3.2, eq. 3, Fig. 6). Semantic supervision and layer rearrangement live in the model
(`keras_fusionseg.models.exfuse`).
"""

import keras
import numpy as np
import tensorflow as tf

from keras_fusionseg.layers.common import PACKAGE, check_positive_int, resize_bilinear
from keras_fusionseg.layers.dupsampling import fit_to_reference


def _check_odd(name, value):
    check_positive_int(name, value)
    if value % 2 == 0:
        raise ValueError(f"`{name}` must be an odd positive integer, received {value!r}.")


# GCN paper Table 1: the larger the kernel the better, k = 15 best at a 512 input (its
# 16 x 16 top map is then covered almost entirely: "valid receptive field"); ports often use 7
# to save compute. We follow the paper.
DEFAULT_GCN_KERNEL_SIZE = 15


def _upsample_2x(inputs, upsample):
    """`upsample(x)` (2x larger), fitted to `reference` when inputs are `[x, reference]`."""
    x, reference = (inputs[0], inputs[1]) if isinstance(inputs, list | tuple) else (inputs, None)
    y = upsample(x)
    return y if reference is None else fit_to_reference(y, reference)


def _upsample_2x_shape(input_shape, filters):
    if isinstance(input_shape[0], list | tuple):
        x_shape, ref_shape = input_shape
        return (x_shape[0], ref_shape[1], ref_shape[2], filters)
    h, w = input_shape[1:3]
    return (input_shape[0], None if h is None else 2 * h, None if w is None else 2 * w, filters)


@keras.saving.register_keras_serializable(package=PACKAGE)
class GlobalConvolution(keras.layers.Layer):
    """Global Convolutional Network block: (k x 1 -> 1 x k) + (1 x k -> k x 1), summed.

    Paper: "Large Kernel Matters", CVPR 2017, Sec. 3.1 and Fig. 2(b): a large k x k kernel
    made cheap by two separable branches, no BN or non-linearity between the convolutions.
    The output has `filters` channels (the number of classes in the paper).

    Args:
        filters: int, output channels.
        kernel_size: odd int k (default 15, the GCN paper's best; 7 is a cheaper choice).
        use_bias: bool, biases on the convolutions.

    Example:
    >>> import numpy as np
    >>> tuple(GlobalConvolution(4, 7)(np.zeros((1, 8, 8, 3), "float32")).shape)
    (1, 8, 8, 4)
    """

    def __init__(self, filters, kernel_size=DEFAULT_GCN_KERNEL_SIZE, use_bias=True, **kwargs):
        super().__init__(**kwargs)
        check_positive_int("filters", filters)
        _check_odd("kernel_size", kernel_size)
        self.filters = filters
        self.kernel_size = kernel_size
        self.use_bias = use_bias
        k = kernel_size

        def conv(shape, name):
            return keras.layers.Conv2D(filters, shape, padding="same", use_bias=use_bias, name=name)

        self.left_kx1 = conv((k, 1), "left_kx1")
        self.left_1xk = conv((1, k), "left_1xk")
        self.right_1xk = conv((1, k), "right_1xk")
        self.right_kx1 = conv((k, 1), "right_kx1")

    def build(self, input_shape):
        mid = (*input_shape[:-1], self.filters)
        self.left_kx1.build(input_shape)
        self.left_1xk.build(mid)
        self.right_1xk.build(input_shape)
        self.right_kx1.build(mid)

    def call(self, x):
        left = self.left_1xk(self.left_kx1(x))
        right = self.right_kx1(self.right_1xk(x))
        return left + right

    def compute_output_shape(self, input_shape):
        return (*input_shape[:-1], self.filters)

    def get_config(self):
        return {
            **super().get_config(),
            "filters": self.filters,
            "kernel_size": self.kernel_size,
            "use_bias": self.use_bias,
        }


@keras.saving.register_keras_serializable(package=PACKAGE)
class BoundaryRefinement(keras.layers.Layer):
    """Boundary Refinement: x + conv3x3(relu(conv3x3(x))), a residual block on score maps.

    Paper: "Large Kernel Matters", CVPR 2017, Sec. 3.2 and Fig. 2(c). The channels are kept.

    Args:
        use_bias: bool, biases on the two convolutions.

    Example:
    >>> import numpy as np
    >>> tuple(BoundaryRefinement()(np.zeros((1, 8, 8, 4), "float32")).shape)
    (1, 8, 8, 4)
    """

    def __init__(self, use_bias=True, **kwargs):
        super().__init__(**kwargs)
        self.use_bias = use_bias

    def build(self, input_shape):
        channels = input_shape[-1]
        if channels is None:
            raise ValueError("BoundaryRefinement needs a known number of input channels.")
        self.conv1 = keras.layers.Conv2D(
            channels, 3, padding="same", use_bias=self.use_bias, name="conv1"
        )
        self.conv2 = keras.layers.Conv2D(
            channels, 3, padding="same", use_bias=self.use_bias, name="conv2"
        )
        self.conv1.build(input_shape)
        self.conv2.build(input_shape)

    def call(self, x):
        return x + self.conv2(tf.nn.relu(self.conv1(x)))

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        return {**super().get_config(), "use_bias": self.use_bias}


@keras.saving.register_keras_serializable(package=PACKAGE)
class SemanticEmbeddingBranch(keras.layers.Layer):
    """Semantic Embedding Branch: low-level x prod_i upsample(conv3x3(high-level_i)).

    Paper: "ExFuse", ECCV 2018, Sec. 3.1, eq. 2 and Fig. 4: the residual term of level l
    becomes F(x_l, x_{l+1}, ..., x_L); every higher level goes through a 3x3 convolution to
    the low level's channels, is upsampled (bilinear) to the low level's size, and the
    element-wise product of all of them multiplies the low-level features.

    Call with `[low_level, high_level_1, ..., high_level_m]` (m >= 1).

    Initialisation (the paper does not give one; its backbone is ImageNet-pretrained, so its
    high levels carry semantics from the first step): `identity_init=True` (default) starts
    every 3x3 convolution at kernel 0 and bias 1, so each factor is 1 and the branch passes
    the low level through unchanged until the convolutions learn the modulation. From
    scratch, Glorot-initialised factors (`identity_init=False`) multiply the low level by a
    product of random-sign noise fields (README, "Model zoo", ExFuse).

    Args:
        use_bias: bool, biases on the 3x3 convolutions (`identity_init` needs them).
        identity_init: bool, kernels 0 and biases 1 at initialisation (see above); False:
            Keras' Conv2D defaults (Glorot uniform kernels, zero biases).

    Example:
    >>> import numpy as np
    >>> seb = SemanticEmbeddingBranch()
    >>> y = seb([np.ones((1, 8, 8, 4)), np.ones((1, 4, 4, 6)), np.ones((1, 2, 2, 8))])
    >>> tuple(y.shape)
    (1, 8, 8, 4)
    """

    def __init__(self, use_bias=True, identity_init=True, **kwargs):
        super().__init__(**kwargs)
        if identity_init and not use_bias:
            raise ValueError(
                "SemanticEmbeddingBranch: `identity_init=True` starts the factors at their "
                "bias 1, so it needs `use_bias=True`; received use_bias=False."
            )
        self.use_bias = use_bias
        self.identity_init = identity_init

    def build(self, input_shape):
        if not isinstance(input_shape, list | tuple) or len(input_shape) < 2:
            raise ValueError(
                "SemanticEmbeddingBranch takes [low_level, high_level, ...] (at least two "
                f"feature maps), received input shape {input_shape!r}."
            )
        channels = input_shape[0][-1]
        initializers = (
            {"kernel_initializer": "zeros", "bias_initializer": "ones"}
            if self.identity_init
            else {}
        )
        self.convs = []
        for i, shape in enumerate(input_shape[1:]):
            conv = keras.layers.Conv2D(
                channels,
                3,
                padding="same",
                use_bias=self.use_bias,
                name=f"conv_high{i + 1}",
                **initializers,
            )
            conv.build(shape)
            self.convs.append(conv)

    def call(self, inputs):
        low, highs = inputs[0], inputs[1:]
        size = tf.shape(low)[1:3]
        y = low
        for conv, high in zip(self.convs, highs, strict=True):
            y = y * resize_bilinear(conv(high), size)
        return y

    def compute_output_shape(self, input_shape):
        return input_shape[0]

    def get_config(self):
        return {
            **super().get_config(),
            "use_bias": self.use_bias,
            "identity_init": self.identity_init,
        }


@keras.saving.register_keras_serializable(package=PACKAGE)
class ExplicitChannelResolutionEmbedding(keras.layers.Layer):
    """ECRE: 3x3 conv to 4 * filters channels, then sub-pixel (depth-to-space) x2 upsampling.

    Paper: "ExFuse", ECCV 2018, Sec. 3.2 and Fig. 5: the top level's upsampling is the
    parameter-free sub-pixel rearrangement, so an auxiliary segmentation loss on its output
    acts on the channels of the high-level map directly ("explicit"). The model attaches
    that loss; this layer is the conv + rearrangement. Channel (a*2 + b)*filters + c of the
    conv output becomes pixel (2i + a, 2j + b), channel c (`tf.nn.depth_to_space` order).

    Call with `x` or `[x, reference]`; with a reference the (2h, 2w) output is cropped
    bottom/right to the reference's size (an odd-sized finer level), or its last row/column
    repeated where the reference is larger (`fit_to_reference`).

    Args:
        filters: int, channels after upsampling (the decoder width: classes, or
            classes * k * k with densely adjacent prediction).
        kernel_size: int, kernel of the convolution before the rearrangement.
        use_bias: bool.

    Example:
    >>> import numpy as np
    >>> tuple(ExplicitChannelResolutionEmbedding(3)(np.zeros((1, 4, 4, 8), "float32")).shape)
    (1, 8, 8, 3)
    """

    def __init__(self, filters, kernel_size=3, use_bias=True, **kwargs):
        super().__init__(**kwargs)
        check_positive_int("filters", filters)
        _check_odd("kernel_size", kernel_size)
        self.filters = filters
        self.kernel_size = kernel_size
        self.use_bias = use_bias
        self.conv = keras.layers.Conv2D(
            4 * filters, kernel_size, padding="same", use_bias=use_bias, name="conv"
        )

    def build(self, input_shape):
        shape = input_shape[0] if isinstance(input_shape[0], list | tuple) else input_shape
        self.conv.build(shape)

    def call(self, inputs):
        return _upsample_2x(inputs, lambda x: tf.nn.depth_to_space(self.conv(x), 2))

    def compute_output_shape(self, input_shape):
        return _upsample_2x_shape(input_shape, self.filters)

    def get_config(self):
        return {
            **super().get_config(),
            "filters": self.filters,
            "kernel_size": self.kernel_size,
            "use_bias": self.use_bias,
        }


@keras.saving.register_keras_serializable(package=PACKAGE)
class DenselyAdjacentPrediction(keras.layers.Layer):
    """Densely Adjacent Prediction: average each class's k x k adjacent predictions (eq. 3).

    Paper: "ExFuse", ECCV 2018, Sec. 3.2, eq. 3 and Fig. 6. The input has num_classes * k * k
    channels in k*k groups and
    r_c(i, j) = 1/k^2 * sum_{0 <= l, m < k} x_{g=(l*k+m), c}(i + l - k//2, j + m - k//2),
    so group g = l*k + m read at position (p, q) predicts the scores of the pixel at offset
    (k//2 - l, k//2 - m) from it, i.e. at (p - l + k//2, q - m + k//2): group 0 (l = m = 0)
    of a feature point predicts its lower-right neighbour (k = 3).

    Channel order: input channel g * num_classes + c holds class c of group g (group-major,
    the `depth_to_space` convention). Positions outside the map count as zero and the sum is
    still divided by k^2, so a spatially constant input gives a constant output except on
    the k//2-pixel border. Implemented as one fixed (non-trainable) convolution, so it
    exports to TFLite.

    Args:
        kernel_size: odd int k (3 in the paper).

    Example:
    >>> import numpy as np
    >>> tuple(DenselyAdjacentPrediction(3)(np.zeros((1, 8, 8, 18), "float32")).shape)
    (1, 8, 8, 2)
    """

    def __init__(self, kernel_size=3, **kwargs):
        super().__init__(**kwargs)
        _check_odd("kernel_size", kernel_size)
        self.kernel_size = kernel_size

    def build(self, input_shape):
        channels = input_shape[-1]
        groups = self.kernel_size * self.kernel_size
        if channels is None or channels % groups:
            raise ValueError(
                f"DenselyAdjacentPrediction with `kernel_size`={self.kernel_size} needs "
                f"num_classes * {groups} input channels, received {channels}."
            )
        self.num_classes = channels // groups

    def _kernel(self, dtype):
        k, c = self.kernel_size, self.num_classes
        kernel = np.zeros((k, k, k * k * c, c), np.float32)
        for l in range(k):  # noqa: E741  (the paper's index names)
            for m in range(k):
                g = l * k + m
                kernel[l, m, g * c + np.arange(c), np.arange(c)] = 1.0 / (k * k)
        return tf.constant(kernel, dtype=dtype)

    def call(self, x):
        # "same" cross-correlation: out(i, j) = sum_{l,m} in(i + l - k//2, j + m - k//2) K[l, m].
        return tf.nn.conv2d(x, self._kernel(x.dtype), strides=1, padding="SAME")

    def compute_output_shape(self, input_shape):
        return (*input_shape[:-1], input_shape[-1] // (self.kernel_size**2))

    def get_config(self):
        return {**super().get_config(), "kernel_size": self.kernel_size}


@keras.saving.register_keras_serializable(package=PACKAGE)
class UpsampleBilinear(keras.layers.Layer):
    """Bilinear upsampling by an integer factor with sizes read at run time.

    The GCN decoder's last two x2 upsampling steps (GCN paper Fig. 2; deconvolutions there)
    when no finer feature map is at hand as a size reference.

    Args:
        factor: int, scale factor.
    """

    def __init__(self, factor=2, **kwargs):
        super().__init__(**kwargs)
        check_positive_int("factor", factor)
        self.factor = factor

    def call(self, x):
        return resize_bilinear(x, tf.shape(x)[1:3] * self.factor)

    def compute_output_shape(self, input_shape):
        h, w = input_shape[1:3]
        return (
            input_shape[0],
            None if h is None else h * self.factor,
            None if w is None else w * self.factor,
            input_shape[3],
        )

    def get_config(self):
        return {**super().get_config(), "factor": self.factor}


def bilinear_deconvolution_kernel(channels):
    """(4, 4, channels, channels) kernel of a x2 transposed conv that upsamples each channel
    bilinearly (half-pixel centres, as `tf.image.resize`) away from the one-pixel border."""
    taps = np.array([0.25, 0.75, 0.75, 0.25], np.float32)
    kernel = np.zeros((4, 4, channels, channels), np.float32)
    kernel[:, :, np.arange(channels), np.arange(channels)] = np.outer(taps, taps)[..., None]
    return kernel


@keras.saving.register_keras_serializable(package=PACKAGE)
class DeconvolutionUpsample(keras.layers.Layer):
    """Learnt x2 upsampling: a 4x4 stride-2 transposed convolution ("deconvolution").

    GCN (Peng et al., CVPR 2017, Fig. 2) upsamples its decoder with deconvolutions, and
    ExFuse's ECRE argument (Sec. 3.2, Table 4) contrasts them with the parameter-free
    sub-pixel upsampling. The kernel starts as per-channel bilinear upsampling when input and
    output widths match (FCN's initialisation; `bilinear_init`), so an untrained decoder
    behaves like the bilinear one except on the border pixels.

    Call with `x` or `[x, reference]`; with a reference the (2h, 2w) output is cropped
    bottom/right to the reference's size (odd-sized finer levels, or the input image), or its
    last row/column repeated where the reference is larger (`fit_to_reference`).

    Args:
        filters: int, output channels.
        bilinear_init: bool, bilinear initial kernel (needs input channels == `filters`).
    """

    def __init__(self, filters, bilinear_init=True, **kwargs):
        super().__init__(**kwargs)
        check_positive_int("filters", filters)
        if not isinstance(bilinear_init, bool):
            raise ValueError(f"`bilinear_init` must be a bool, received {bilinear_init!r}.")
        self.filters = filters
        self.bilinear_init = bilinear_init
        self.deconv = keras.layers.Conv2DTranspose(
            filters, 4, strides=2, padding="same", use_bias=False, name="deconv"
        )

    def build(self, input_shape):
        shape = input_shape[0] if isinstance(input_shape[0], list | tuple) else input_shape
        self.deconv.build(shape)
        if self.bilinear_init:
            if shape[-1] != self.filters:
                raise ValueError(
                    f"`bilinear_init` needs {self.filters} input channels (= `filters`), "
                    f"received {shape[-1]}."
                )
            self.deconv.kernel.assign(bilinear_deconvolution_kernel(self.filters))

    def call(self, inputs):
        return _upsample_2x(inputs, self.deconv)

    def compute_output_shape(self, input_shape):
        return _upsample_2x_shape(input_shape, self.filters)

    def get_config(self):
        return {
            **super().get_config(),
            "filters": self.filters,
            "bilinear_init": self.bilinear_init,
        }
