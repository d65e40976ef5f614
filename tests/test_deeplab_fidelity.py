"""The paper's DeepLabv3+ (Xception-65, 21 classes, 513x513, OS16, separable) counted exactly.

Reference: 41,055,413 trainable + 202,800 batch-norm moving statistics = 41,258,213 parameters
(the reference layout), 54.17B multiply-adds (official DeepLab model zoo).
"""

import pytest

from keras_fusionseg import backbones, models
from keras_fusionseg.layers.deeplabv3plus import ASPP, DeepLabV3PlusDecoder
from keras_fusionseg.utils import count_macs, count_parameters

PAPER_PARAMS_TOTAL = 41_258_213
PAPER_PARAMS_TRAINABLE = 41_055_413
PAPER_MACS = 54.17e9
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
@pytest.mark.skipif("xception65" not in backbones.list_backbones(), reason="no xception65 yet")
def test_deeplabv3plus_xception65_parameters_and_macs():
    model = models.build(
        "deeplabv3plus",
        num_classes=21,
        input_shape=(513, 513, 3),
        backbone="xception65",
        output_stride=16,
    )
    assert model.get_layer("aspp").separable and model.get_layer("decoder").separable
    counts = count_parameters(model)
    assert counts["total"] == PAPER_PARAMS_TOTAL, counts
    assert counts["trainable"] == PAPER_PARAMS_TRAINABLE, counts
    macs = count_macs(model, 513)
    assert abs(macs / PAPER_MACS - 1) < 0.01, macs


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
