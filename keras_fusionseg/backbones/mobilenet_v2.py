"""MobileNetV2 backbone with a controllable output stride (atrous depthwise convolutions).

"MobileNetV2: Inverted Residuals and Linear Bottlenecks" (Sandler et al., CVPR 2018),
Sec. 3-4 and Table 2 (inverted residual blocks: 1x1 expansion -> ReLU6 -> 3x3 depthwise ->
ReLU6 -> linear 1x1 projection), used as a DeepLabv3+ encoder as in its Sec. 6.3.

Layers are plain Keras layers named as in Keras Applications' MobileNetV2 (`Conv1`,
`bn_Conv1`, `block_1_expand`, ...), so its ImageNet weight files load by layer name. Strided
convs pad explicitly then use VALID. By default (`strided_padding="keras"`) the padding is
((0, 1), (0, 1)), as Keras Applications pads for inputs of unknown size (TF "same" padding on
even sizes): the ImageNet weights were trained that way, so features match Keras Applications
exactly on even-sized inputs; an odd size n then gives floor(n / 2). `"symmetric"` pads
((1, 1), (1, 1)) as the reference DeepLab code and the other backbones do (ceil(n / 2) on
any size, corner-aligned grids), at the cost of a one-pixel shift against the ImageNet
weights.

The final 1x1 conv to 1280 channels (`Conv_1`, `Conv_1_bn`) is a classifier-side layer that
DeepLab does not use: it is not part of this backbone, and `load_backbone_weights` skips it.
"""

import keras

from keras_fusionseg.backbones.checks import check_input_shape, l2_regularizer, pyramid_model
from keras_fusionseg.backbones.output_stride import AtrousSchedule
from keras_fusionseg.backbones.registry import register_backbone
from keras_fusionseg.layers.common import AtrousDepthwiseConv2D, ImageNormalization

ALPHAS = (0.35, 0.5, 0.75, 1.0, 1.3, 1.4)  # widths with Keras Applications ImageNet weights
BN_MOMENTUM = 0.999
BN_EPSILON = 1e-3
STRIDED_PADDINGS = {"keras": ((0, 1), (0, 1)), "symmetric": ((1, 1), (1, 1))}

# (output channels before alpha, stride, expansion) of blocks 0..16, Sandler et al. Table 2.
INVERTED_RESIDUAL_BLOCKS = (
    (16, 1, 1),
    (24, 2, 6),
    (24, 1, 6),
    (32, 2, 6),
    (32, 1, 6),
    (32, 1, 6),
    (64, 2, 6),
    (64, 1, 6),
    (64, 1, 6),
    (64, 1, 6),
    (96, 1, 6),
    (96, 1, 6),
    (96, 1, 6),
    (160, 2, 6),
    (160, 1, 6),
    (160, 1, 6),
    (320, 1, 6),
)
# Pyramid level -> index of the last block at that stride (P5 = block 16, DeepLab's endpoint).
PYRAMID_BLOCKS = {"P1": 0, "P2": 2, "P3": 5, "P4": 12, "P5": 16}


def make_divisible(value, divisor=8):
    """Channel rounding of the MobileNet reference (nearest multiple, at most 10% down)."""
    rounded = max(divisor, int(value + divisor / 2) // divisor * divisor)
    return rounded + divisor if rounded < 0.9 * value else rounded


class _Layers:
    def __init__(self, bn_momentum, bn_epsilon, regularizer):
        self.bn_momentum = bn_momentum
        self.bn_epsilon = bn_epsilon
        self.regularizer = regularizer

    def bn(self, x, name):
        return keras.layers.BatchNormalization(
            momentum=self.bn_momentum, epsilon=self.bn_epsilon, name=name
        )(x)

    def pointwise(self, x, filters, name):
        return keras.layers.Conv2D(
            filters, 1, use_bias=False, kernel_regularizer=self.regularizer, name=name
        )(x)


def _inverted_residual(x, layers, filters, expansion, strides, dilation_rate, block_id, padding):
    """Inverted residual with linear bottleneck (Sandler et al. Fig. 3b, Table 1)."""
    in_channels = int(x.shape[-1])
    inputs = x
    prefix = f"block_{block_id}_" if block_id else "expanded_conv_"
    if block_id:
        x = layers.pointwise(x, expansion * in_channels, f"{prefix}expand")
        x = layers.bn(x, f"{prefix}expand_BN")
        x = keras.layers.ReLU(6.0, name=f"{prefix}expand_relu")(x)
    if strides > 1:
        x = keras.layers.ZeroPadding2D(padding, name=f"{prefix}pad")(x)
    x = AtrousDepthwiseConv2D(
        3,
        strides=strides,
        dilation_rate=dilation_rate,
        padding="valid" if strides > 1 else "same",
        use_bias=False,
        name=f"{prefix}depthwise",
    )(x)
    x = layers.bn(x, f"{prefix}depthwise_BN")
    x = keras.layers.ReLU(6.0, name=f"{prefix}depthwise_relu")(x)
    x = layers.pointwise(x, filters, f"{prefix}project")
    x = layers.bn(x, f"{prefix}project_BN")
    if in_channels == filters and strides == 1:
        x = keras.layers.Add(name=f"{prefix}add")([inputs, x])
    return x


@register_backbone("mobilenetv2")
def mobilenetv2(
    input_shape=(None, None, 3),
    output_stride=32,
    *,
    alpha=1.0,
    strided_padding="keras",
    normalization="tf",
    bn_momentum=BN_MOMENTUM,
    bn_epsilon=BN_EPSILON,
    weight_decay=0.0,
    name="mobilenetv2",
):
    """MobileNetV2 (Sandler et al., CVPR 2018), depthwise convs dilated to the output stride.

    Pyramid: "P1" block 0 (stride 2, 16*alpha ch), "P2" block 2 (stride 4, 24*alpha),
    "P3" block 5 (stride 8, 32*alpha), "P4" block 12 (stride 16, 96*alpha), "P5" block 16
    projection (320*alpha; DeepLab's encoder output). Channels are rounded to multiples of 8.

    Args:
        input_shape: (height, width, channels); height and width may be None.
        output_stride: 8, 16 or 32.
        alpha: float width multiplier, one of 0.35, 0.5, 0.75, 1.0, 1.3, 1.4.
        strided_padding: "keras" or "symmetric", explicit padding of the strided 3x3
            convs (see the module docstring).
        normalization: `ImageNormalization` mode ("tf": [-1, 1], as the ImageNet weights).
        bn_momentum, bn_epsilon: float, batch-norm settings.
        weight_decay: float, L2 factor on the 1x1/3x3 conv kernels (depthwise not regularised).
        name: str, model name.

    Returns:
        A functional `keras.Model` with dict outputs "P1".."P5".
    """
    if alpha not in ALPHAS:
        raise ValueError(f"`alpha` must be one of {list(ALPHAS)}, received {alpha!r}.")
    if strided_padding not in STRIDED_PADDINGS:
        raise ValueError(
            f"`strided_padding` must be one of {sorted(STRIDED_PADDINGS)}, "
            f"received {strided_padding!r}."
        )
    padding = STRIDED_PADDINGS[strided_padding]
    check_input_shape(input_shape, normalization)
    layers = _Layers(bn_momentum, bn_epsilon, l2_regularizer(weight_decay))
    schedule = AtrousSchedule(output_stride)

    inputs = keras.Input(shape=tuple(input_shape), name="image")
    x = ImageNormalization(normalization, name="normalization")(inputs)
    x = keras.layers.ZeroPadding2D(padding, name="Conv1_pad")(x)
    x = keras.layers.Conv2D(
        make_divisible(32 * alpha),
        3,
        strides=schedule.next(2)[0],
        padding="valid",
        use_bias=False,
        kernel_regularizer=layers.regularizer,
        name="Conv1",
    )(x)
    x = layers.bn(x, "bn_Conv1")
    x = keras.layers.ReLU(6.0, name="Conv1_relu")(x)

    pyramid = {}
    levels = {block: key for key, block in PYRAMID_BLOCKS.items()}
    for block_id, (filters, stride, expansion) in enumerate(INVERTED_RESIDUAL_BLOCKS):
        strides, rate = schedule.next(stride)
        width = make_divisible(int(filters * alpha))
        x = _inverted_residual(x, layers, width, expansion, strides, rate, block_id, padding)
        if block_id in levels:
            pyramid[levels[block_id]] = x
    return pyramid_model(inputs, pyramid, output_stride, name)
