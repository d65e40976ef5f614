"""ResNet v1 (bottleneck) backbones with a controllable output stride.

"Deep Residual Learning for Image Recognition" (He et al., CVPR 2016), Sec. 3.3 and Table 1
(bottleneck blocks 1x1 -> 3x3 -> 1x1, expansion 4), dilated as in DeepLabv3 (Chen et al.,
arXiv 2017) Sec. 3.2-3.3 (atrous convolution, multi-grid) and PSPNet / FastFCN (deep stem).

Layers are plain Keras layers named exactly as in Keras Applications' ResNet50/101/152
(`conv1_conv`, `conv2_block1_1_conv`, ...), with the stride on the first 1x1 convolution of
each stage as there, so its ImageNet weight files load by layer name and give identical
features at output stride 32.
"""

import keras

from keras_fusionseg.backbones.checks import (
    check_input_shape,
    check_int_tuple,
    l2_regularizer,
    pyramid_model,
)
from keras_fusionseg.backbones.output_stride import AtrousSchedule
from keras_fusionseg.backbones.registry import register_backbone
from keras_fusionseg.layers.common import AtrousConv2D, ImageNormalization

# Keras Applications' ResNet batch-norm settings (needed for identical features).
RESNET_BN_EPSILON = 1.001e-5
RESNET_BN_MOMENTUM = 0.99

DEFAULT_STAGE_WIDTHS = (64, 128, 256, 512)
EXPANSION = 4


class _ResNetLayers:
    """Factory of the named conv/BN layers shared by stem and blocks."""

    def __init__(self, use_bias, bn_momentum, bn_epsilon, regularizer):
        self.use_bias = use_bias
        self.bn_momentum = bn_momentum
        self.bn_epsilon = bn_epsilon
        self.regularizer = regularizer

    def conv(self, x, filters, kernel_size, name, strides=1, dilation_rate=1, padding="same"):
        return AtrousConv2D(
            filters,
            kernel_size,
            strides=strides,
            dilation_rate=dilation_rate,
            padding=padding,
            use_bias=self.use_bias,
            kernel_regularizer=self.regularizer,
            name=name,
        )(x)

    def bn(self, x, name):
        return keras.layers.BatchNormalization(
            momentum=self.bn_momentum, epsilon=self.bn_epsilon, name=name
        )(x)


def _stem(x, layers, stem_width, deep_stem):
    """7x7/2 conv (He et al.) or three 3x3 convs, the first strided (PSPNet / FastFCN)."""
    if not deep_stem:
        x = keras.layers.ZeroPadding2D(((3, 3), (3, 3)), name="conv1_pad")(x)
        x = layers.conv(x, stem_width, 7, "conv1_conv", strides=2, padding="valid")
        x = layers.bn(x, "conv1_bn")
        return keras.layers.Activation("relu", name="conv1_relu")(x)
    widths = (stem_width, stem_width, 2 * stem_width)
    for i, width in enumerate(widths, start=1):
        strides = 2 if i == 1 else 1
        if strides > 1:
            x = keras.layers.ZeroPadding2D(((1, 1), (1, 1)), name=f"conv1_{i}_pad")(x)
        padding = "valid" if strides > 1 else "same"
        x = layers.conv(x, width, 3, f"conv1_{i}_conv", strides=strides, padding=padding)
        x = layers.bn(x, f"conv1_{i}_bn")
        x = keras.layers.Activation("relu", name=f"conv1_{i}_relu")(x)
    return x


def _bottleneck(x, layers, width, strides, dilation_rate, conv_shortcut, name):
    """Bottleneck unit of He et al. Fig. 5 (right): 1x1 -> 3x3 (atrous) -> 1x1, + shortcut."""
    if conv_shortcut:
        shortcut = layers.conv(x, EXPANSION * width, 1, f"{name}_0_conv", strides=strides)
        shortcut = layers.bn(shortcut, f"{name}_0_bn")
    else:
        shortcut = x
    x = layers.conv(x, width, 1, f"{name}_1_conv", strides=strides)
    x = layers.bn(x, f"{name}_1_bn")
    x = keras.layers.Activation("relu", name=f"{name}_1_relu")(x)
    x = layers.conv(x, width, 3, f"{name}_2_conv", dilation_rate=dilation_rate)
    x = layers.bn(x, f"{name}_2_bn")
    x = keras.layers.Activation("relu", name=f"{name}_2_relu")(x)
    x = layers.conv(x, EXPANSION * width, 1, f"{name}_3_conv")
    x = layers.bn(x, f"{name}_3_bn")
    x = keras.layers.Add(name=f"{name}_add")([shortcut, x])
    return keras.layers.Activation("relu", name=f"{name}_out")(x)


def build_resnet(
    input_shape=(None, None, 3),
    output_stride=32,
    *,
    depths,
    stage_widths=DEFAULT_STAGE_WIDTHS,
    stem_width=64,
    deep_stem=False,
    multi_grid=None,
    normalization="caffe",
    use_bias=True,
    bn_momentum=RESNET_BN_MOMENTUM,
    bn_epsilon=RESNET_BN_EPSILON,
    weight_decay=0.0,
    name="resnet",
):
    """Builds a dilated ResNet v1 feature extractor (see `resnet50` for the arguments)."""
    depths = check_int_tuple("depths", depths, 4)
    stage_widths = check_int_tuple("stage_widths", stage_widths, 4)
    if not isinstance(stem_width, int) or isinstance(stem_width, bool) or stem_width < 1:
        raise ValueError(f"`stem_width` must be a positive integer, received {stem_width!r}.")
    if not isinstance(deep_stem, bool):
        raise ValueError(f"`deep_stem` must be a bool, received {deep_stem!r}.")
    if multi_grid is not None:
        multi_grid = check_int_tuple("multi_grid", multi_grid)
        if len(multi_grid) != depths[-1]:
            raise ValueError(
                f"`multi_grid` needs one rate per block of the last stage ({depths[-1]}), "
                f"received {multi_grid!r}."
            )
    check_input_shape(input_shape, normalization)
    layers = _ResNetLayers(use_bias, bn_momentum, bn_epsilon, l2_regularizer(weight_decay))
    schedule = AtrousSchedule(output_stride)

    inputs = keras.Input(shape=tuple(input_shape), name="image")
    x = ImageNormalization(normalization, name="normalization")(inputs)
    x = _stem(x, layers, stem_width, deep_stem)
    schedule.next(2)
    pyramid = {"P1": x}
    x = keras.layers.ZeroPadding2D(((1, 1), (1, 1)), name="pool1_pad")(x)
    x = keras.layers.MaxPooling2D(3, strides=2, name="pool1_pool")(x)
    schedule.next(2)

    for stage, (depth, width) in enumerate(zip(depths, stage_widths, strict=True)):
        last_stage = stage == len(depths) - 1
        for block in range(depth):
            nominal = 2 if (block == 0 and stage > 0) else 1
            strides, rate = schedule.next(nominal)
            if last_stage and multi_grid is not None:
                # DeepLabv3 Sec. 3.2: unit rates = the stage's rate x multi-grid.
                rate = schedule.rate * multi_grid[block]
            x = _bottleneck(
                x,
                layers,
                width,
                strides,
                rate,
                conv_shortcut=block == 0,
                name=f"conv{stage + 2}_block{block + 1}",
            )
        pyramid[f"P{stage + 2}"] = x

    return pyramid_model(inputs, pyramid, output_stride, name)


_DOC_ARGS = """

    Args:
        input_shape: (height, width, channels); height and width may be None.
        output_stride: 8, 16 or 32; deeper stages are dilated instead of strided.
        depths: 4 ints, bottleneck blocks per stage (conv2..conv5).
        stage_widths: 4 ints, bottleneck mid widths (outputs are 4x these).
        stem_width: int, 7x7 stem channels; the deep stem uses
            (stem_width, stem_width, 2 * stem_width).
        deep_stem: bool, three 3x3 convs instead of the 7x7 conv (PSPNet / FastFCN).
        multi_grid: None (every last-stage block at the stage's rate) or one int per
            last-stage block; block i then runs at rate * multi_grid[i] (DeepLabv3 uses
            (1, 2, 4)), at any output stride.
        normalization: `ImageNormalization` mode, "caffe" for Keras Applications weights.
        use_bias: bool, conv biases (True as in Keras Applications' weight files).
        bn_momentum, bn_epsilon: float, batch-norm settings.
        weight_decay: float, L2 factor on conv kernels (Keras L2: wd * sum(w**2)).
        name: str, model name.

    Returns:
        A functional `keras.Model` with dict outputs "P1".."P5" (see the registry).
    """


@register_backbone("resnet50")
def resnet50(input_shape=(None, None, 3), output_stride=32, depths=(3, 4, 6, 3), **options):
    """ResNet-50 v1 (He et al., CVPR 2016), dilated to the output stride."""
    options.setdefault("name", "resnet50")
    return build_resnet(input_shape, output_stride, depths=depths, **options)


@register_backbone("resnet101")
def resnet101(input_shape=(None, None, 3), output_stride=32, depths=(3, 4, 23, 3), **options):
    """ResNet-101 v1 (He et al., CVPR 2016), dilated to the output stride."""
    options.setdefault("name", "resnet101")
    return build_resnet(input_shape, output_stride, depths=depths, **options)


@register_backbone("resnet152")
def resnet152(input_shape=(None, None, 3), output_stride=32, depths=(3, 8, 36, 3), **options):
    """ResNet-152 v1 (He et al., CVPR 2016), dilated to the output stride."""
    options.setdefault("name", "resnet152")
    return build_resnet(input_shape, output_stride, depths=depths, **options)


for _builder in (resnet50, resnet101, resnet152):
    _builder.__doc__ += _DOC_ARGS
    _builder.forwards_options_to = build_resnet  # lets configs check option names
