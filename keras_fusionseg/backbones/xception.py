"""Modified aligned Xception-65 / -71 backbones with a controllable output stride.

"Encoder-Decoder with Atrous Separable Convolution for Semantic Image Segmentation"
(DeepLabv3+, Chen et al., ECCV 2018), Sec. 3.2 and Fig. 4: Xception (Chollet, CVPR 2017)
deepened (16 middle-flow units), every max-pool replaced by a strided separable conv, and a
BN (+ ReLU in the last exit block) after each 3x3 depthwise conv. Layout as in the reference
DeepLab code: entry flow [128]x3 s2, [256]x3 s2, [728]x3 s2 (1x1 conv skips); middle flow
16 x [728]x3 (identity skips); exit flow [728, 1024, 1024] s2 (conv skip), [1536, 1536, 2048]
(no skip). Xception-71's entry flow is 128 s2, 256 s1, 256 s2, 728 s1, 728 s2.

ReLU placement (`relu_placement`): the paper's text (Sec. 3.2) adds a BN and a ReLU after
every 3x3 depthwise conv, MobileNet-style;
the reference DeepLab code (whose ImageNet checkpoints exist) instead puts one ReLU *before*
each depthwise conv and none after its BNs, except in the last exit block, where ReLU follows
each BN. `"reference"` (default) builds the code's placement, `"paper"` the text's (ReLU after
both BNs of every separable conv, no pre-activation). Parameters are identical either way.

Pyramid: "P1" stem output (64 ch, stride 2); "P2" the low-level endpoint of DeepLabv3+, the
2nd separable conv of the first 256-wide strided entry block (before its strided conv: 256 ch,
stride 4); "P3" the last entry block at stride 8 (Xception-65: block 2, 256 ch; -71: block 4,
728 ch); "P4" the middle-flow output (728 ch); "P5" the exit-flow output (2048 ch).
"""

import keras

from keras_fusionseg.backbones.checks import check_input_shape, l2_regularizer, pyramid_model
from keras_fusionseg.backbones.mobilenet_v2 import make_divisible
from keras_fusionseg.backbones.output_stride import AtrousSchedule
from keras_fusionseg.backbones.registry import register_backbone
from keras_fusionseg.layers.common import (
    BN_EPSILON,
    BN_MOMENTUM,
    ConvBNReLU,
    ImageNormalization,
    SeparableConvBN,
)

CONV, IDENTITY, NONE = "conv", "identity", "none"

# Entry blocks: (widths of the 3 separable convs, stride); every entry block has a conv skip.
ENTRY_FLOWS = {
    65: (((128,) * 3, 2), ((256,) * 3, 2), ((728,) * 3, 2)),
    71: (((128,) * 3, 2), ((256,) * 3, 1), ((256,) * 3, 2), ((728,) * 3, 1), ((728,) * 3, 2)),
}
# Index of the entry block giving the DeepLabv3+ low-level endpoint (P2) and P3.
LOW_LEVEL_BLOCK = {65: 1, 71: 2}
STRIDE8_BLOCK = {65: 1, 71: 3}
MIDDLE_WIDTHS = (728,) * 3
EXIT_BLOCKS = (((728, 1024, 1024), 2, CONV, False), ((1536, 1536, 2048), 1, NONE, True))


RELU_PLACEMENTS = ("reference", "paper")


class _XceptionLayers:
    def __init__(self, width_multiplier, regularizer, bn_momentum, bn_epsilon):
        self.width_multiplier = width_multiplier
        self.regularizer = regularizer
        self.bn = dict(bn_momentum=bn_momentum, bn_epsilon=bn_epsilon)

    def width(self, channels):
        if self.width_multiplier == 1.0:
            return channels
        return make_divisible(channels * self.width_multiplier)

    def conv(self, x, filters, kernel_size, strides, activation, name):
        return ConvBNReLU(
            self.width(filters),
            kernel_size,
            strides=strides,
            activation=activation,
            kernel_regularizer=self.regularizer,
            name=name,
            **self.bn,
        )(x)

    def separable(self, x, filters, strides, rate, depth_activation, name):
        return SeparableConvBN(
            self.width(filters),
            3,
            strides=strides,
            dilation_rate=rate,
            depth_activation=depth_activation,
            pre_activation=not depth_activation,
            kernel_regularizer=self.regularizer,
            name=name,
            **self.bn,
        )(x)


def _xception_unit(x, layers, widths, strides, rate, skip, depth_activation, name):
    """Three separable convs (stride on the 3rd) plus a conv / identity / no skip.

    Returns the unit output and the 2nd separable conv's output (the low-level endpoint).
    """
    inputs = x
    second = None
    for i, width in enumerate(widths):
        unit_strides = strides if i == 2 else 1
        x = layers.separable(
            x, width, unit_strides, rate, depth_activation, f"{name}_sepconv{i + 1}"
        )
        if i == 1:
            second = x
    if skip == CONV:
        shortcut = layers.conv(inputs, widths[-1], 1, strides, None, f"{name}_shortcut")
        x = keras.layers.Add(name=f"{name}_add")([shortcut, x])
    elif skip == IDENTITY:
        x = keras.layers.Add(name=f"{name}_add")([inputs, x])
    return x, second


def build_xception(
    input_shape=(None, None, 3),
    output_stride=16,
    *,
    depth=65,
    middle_flow_units=16,
    width_multiplier=1.0,
    normalization="tf",
    bn_momentum=BN_MOMENTUM,
    bn_epsilon=BN_EPSILON,
    weight_decay=0.0,
    relu_placement="reference",
    name=None,
):
    """Builds modified aligned Xception-`depth` (see `xception65` for the arguments)."""
    if relu_placement not in RELU_PLACEMENTS:
        raise ValueError(
            f"`relu_placement` must be one of {list(RELU_PLACEMENTS)}, received {relu_placement!r}."
        )
    paper = relu_placement == "paper"
    if depth not in ENTRY_FLOWS:
        raise ValueError(f"`depth` must be one of {sorted(ENTRY_FLOWS)}, received {depth!r}.")
    if (
        not isinstance(middle_flow_units, int)
        or isinstance(middle_flow_units, bool)
        or middle_flow_units < 1
    ):
        raise ValueError(
            f"`middle_flow_units` must be a positive integer, received {middle_flow_units!r}."
        )
    if not isinstance(width_multiplier, int | float) or not 0 < width_multiplier <= 1:
        raise ValueError(
            f"`width_multiplier` must be a float in (0, 1], received {width_multiplier!r}."
        )
    check_input_shape(input_shape, normalization)
    layers = _XceptionLayers(
        float(width_multiplier), l2_regularizer(weight_decay), bn_momentum, bn_epsilon
    )
    schedule = AtrousSchedule(output_stride)

    inputs = keras.Input(shape=tuple(input_shape), name="image")
    x = ImageNormalization(normalization, name="normalization")(inputs)
    x = layers.conv(x, 32, 3, schedule.next(2)[0], "relu", "entry_flow_conv1_1")
    x = layers.conv(x, 64, 3, 1, "relu", "entry_flow_conv1_2")
    pyramid = {"P1": x}

    for i, (widths, stride) in enumerate(ENTRY_FLOWS[depth]):
        strides, rate = schedule.next(stride)
        block = f"entry_flow_block{i + 1}"
        x, second = _xception_unit(x, layers, widths, strides, rate, CONV, paper, block)
        if i == LOW_LEVEL_BLOCK[depth]:
            pyramid["P2"] = second
        if i == STRIDE8_BLOCK[depth]:
            pyramid["P3"] = x

    _, rate = schedule.next(1)
    for i in range(middle_flow_units):
        unit = f"middle_flow_block1_unit{i + 1}"
        x, _ = _xception_unit(x, layers, MIDDLE_WIDTHS, 1, rate, IDENTITY, paper, unit)
    pyramid["P4"] = x

    for i, (widths, stride, skip, depth_activation) in enumerate(EXIT_BLOCKS):
        strides, rate = schedule.next(stride)
        block = f"exit_flow_block{i + 1}"
        activation = depth_activation or paper
        x, _ = _xception_unit(x, layers, widths, strides, rate, skip, activation, block)
    pyramid["P5"] = x
    return pyramid_model(inputs, pyramid, output_stride, name or f"xception{depth}")


_DOC_ARGS = """

    Args:
        input_shape: (height, width, channels); height and width may be None.
        output_stride: 8, 16 or 32 (DeepLabv3+ trains at 16 and evaluates at 8 or 16).
        middle_flow_units: int, middle-flow units (16 in the paper).
        width_multiplier: float in (0, 1], scales every width (rounded to multiples of
            8) for narrow test variants; 1.0 is the paper's network.
        normalization: `ImageNormalization` mode ("tf": [-1, 1], as DeepLab).
        bn_momentum, bn_epsilon: float (0.9997, 1e-3 as the reference).
        weight_decay: float, L2 factor on conv / pointwise kernels (the reference uses
            4e-5; Keras L2 is wd * sum(w**2)); depthwise kernels are not regularised.
        relu_placement: "reference" (DeepLab code: ReLU before each depthwise conv, after
            the BNs only in the last exit block) or "paper" (ReLU after each BN, Sec. 3.2).
        name: str, model name.

    Returns:
        A functional `keras.Model` with dict outputs "P1".."P5" (see the module docstring).
    """


@register_backbone("xception65")
def xception65(input_shape=(None, None, 3), output_stride=16, **options):
    """Modified aligned Xception-65 of DeepLabv3+ (Chen et al., ECCV 2018, Fig. 4)."""
    return build_xception(input_shape, output_stride, depth=65, **options)


@register_backbone("xception71")
def xception71(input_shape=(None, None, 3), output_stride=16, **options):
    """Modified aligned Xception-71 (DeepLab reference: five entry-flow blocks)."""
    return build_xception(input_shape, output_stride, depth=71, **options)


for _builder in (xception65, xception71):
    _builder.__doc__ += _DOC_ARGS
    _builder.forwards_options_to = build_xception  # lets configs check option names
