"""The paper's DeepLabv3+ (Xception-65, 21 classes, 513x513, OS16, separable) counted exactly.

Reference: 41,055,413 trainable + 202,800 batch-norm moving statistics = 41,258,213 parameters
(the reference layout), 54.17B multiply-adds at OS16 and 177.10B at OS8 (official DeepLab model
zoo); multiply-adds are also checked exactly against a hand count of the reference layout.
"""

import pytest

from keras_fusionseg import models
from keras_fusionseg.layers.deeplabv3plus import ASPP, DeepLabV3PlusDecoder
from keras_fusionseg.utils import count_parameters, macs_by_op_type

PAPER_PARAMS_TOTAL = 41_258_213
PAPER_PARAMS_TRAINABLE = 41_055_413
PAPER_MACS = {16: 54.17e9, 8: 177.10e9}  # DeepLab model zoo
# Our separable ASPP on 2048 channels + decoder on 256 low-level channels, 21 classes.
HEAD_PARAMS_TOTAL = 3_205_701
HEAD_PARAMS_TRAINABLE = 3_188_101


def test_head_parameter_count_at_paper_widths():
    aspp = ASPP(256, separable=True)
    aspp.build((None, None, None, 2048))
    decoder = DeepLabV3PlusDecoder(21, separable=True)
    decoder.build([(None, None, None, 256), (None, None, None, 256)])
    counts = [count_parameters(aspp), count_parameters(decoder)]
    assert sum(c["total"] for c in counts) == HEAD_PARAMS_TOTAL
    assert sum(c["trainable"] for c in counts) == HEAD_PARAMS_TRAINABLE


@pytest.mark.slow
def test_deeplabv3plus_xception65_parameters():
    model = models.build("deeplabv3plus", num_classes=21, backbone="xception65", output_stride=16)
    assert model.get_layer("aspp").separable and model.get_layer("decoder").separable
    counts = count_parameters(model)
    assert counts["total"] == PAPER_PARAMS_TOTAL, counts
    assert counts["trainable"] == PAPER_PARAMS_TRAINABLE, counts


def deeplabv3plus_xception65_macs(size=513, output_stride=16, num_classes=21):
    """Multiply-adds of the reference layout (DeepLab model zoo, separable ASPP and decoder),
    counted by hand: output pixels x kernel x input channels (x output channels for dense
    convs). Gives 54.04B at OS16 and 176.85B at OS8 on 513x513 (zoo: 54.17B / 177.10B).

    Strided 3x3 convs pad explicitly, so each halves n to (n - 1) // 2 + 1; the unit that
    would pass `output_stride` keeps stride 1 (atrous rates do not change the count).
    """
    conv = depthwise = 0
    n, stride = (size - 1) // 2 + 1, 2
    conv += n * n * 9 * 3 * 32 + n * n * 9 * 32 * 64  # stem: 3x3/32 stride 2, 3x3/64

    def block(n, channels, depths, strided, shortcut):
        nonlocal conv, depthwise
        inputs = channels
        for i, depth in enumerate(depths):
            if strided and i == 2:
                n = (n - 1) // 2 + 1
            depthwise += n * n * 9 * channels
            conv += n * n * channels * depth
            channels = depth
        if shortcut:
            conv += n * n * inputs * channels
        return n, channels

    channels, low_level = 64, None
    for depth in (128, 256, 728):  # entry flow
        if depth == 256:
            low_level = n  # stride-4 endpoint: block 2 before its strided conv
        strided = stride < output_stride
        n, channels = block(n, channels, [depth] * 3, strided, True)
        stride *= 2 if strided else 1
    for _ in range(16):  # middle flow
        n, channels = block(n, channels, [728] * 3, False, False)
    n, channels = block(n, channels, [728, 1024, 1024], stride < output_stride, True)
    n, channels = block(n, channels, [1536, 1536, 2048], False, False)
    # ASPP: image pooling 1x1 on a 1x1 map, 1x1 branch, three separable 3x3, 1x1 projection.
    conv += 2048 * 256 + n * n * 2048 * 256 + 3 * n * n * 2048 * 256 + n * n * 5 * 256 * 256
    depthwise += 3 * n * n * 9 * 2048
    # Decoder at the low-level size: 1x1 to 48, two separable 3x3 to 256, 1x1 logits.
    m = low_level * low_level
    conv += m * 256 * 48 + m * (48 + 256) * 256 + m * 256 * 256 + m * 256 * num_classes
    depthwise += m * 9 * (48 + 256) + m * 9 * 256
    return {"Conv2D": conv, "DepthwiseConv2dNative": depthwise}


def test_hand_count_gives_the_reference_facts():
    # Independent of the library: the hand count reproduces the reference counts.
    assert sum(deeplabv3plus_xception65_macs(output_stride=16).values()) == 54_035_303_024
    assert sum(deeplabv3plus_xception65_macs(output_stride=8).values()) == 176_851_524_720


@pytest.mark.slow
@pytest.mark.parametrize("output_stride", [16, 8])
def test_deeplabv3plus_xception65_macs_equal_the_hand_count(output_stride):
    model = models.build(
        "deeplabv3plus",
        num_classes=21,
        input_shape=(513, 513, 3),
        backbone="xception65",
        output_stride=output_stride,
    )
    macs = macs_by_op_type(model, 513)
    assert macs == deeplabv3plus_xception65_macs(513, output_stride), macs
    assert abs(sum(macs.values()) / PAPER_MACS[output_stride] - 1) < 0.01


def xception_block_parameters(inputs, depth):
    """One entry-flow block: three separable convs (depthwise 3x3 + BN, pointwise + BN) and a
    1x1 shortcut conv + BN; BN counted with its moving statistics (4 per channel)."""
    first = 9 * inputs + 4 * inputs + inputs * depth + 4 * depth
    later = 2 * (9 * depth + 4 * depth + depth * depth + 4 * depth)
    return first + later + inputs * depth + 4 * depth, 2 * (inputs + 6 * depth)


@pytest.mark.slow
def test_deeplabv3plus_xception71_parameters_derived_from_xception65():
    # Xception-71 (DeepLab model zoo) = Xception-65 plus two entry-flow blocks, 256 -> 256 and
    # 728 -> 728 (the stride-2 steps move one block later); the heads are the same.
    extra = [xception_block_parameters(256, 256), xception_block_parameters(728, 728)]
    total = PAPER_PARAMS_TOTAL + sum(count for count, _ in extra)
    trainable = PAPER_PARAMS_TRAINABLE + sum(count - moving for count, moving in extra)
    model = models.build("deeplabv3plus", num_classes=21, backbone="xception71", output_stride=16)
    counts = count_parameters(model)
    assert (counts["total"], counts["trainable"]) == (total, trainable)  # 43,694,413 / 43,477,837
    assert abs(trainable - 43.48e6) < 0.005e6  # model zoo: about 43.48M
