"""Modified aligned Xception-65/71: pyramid strides, atrous rates, counts, block structure."""

import numpy as np
import pytest

from keras_fusionseg.backbones import build_backbone
from keras_fusionseg.layers.common import SeparableConvBN

NARROW = dict(width_multiplier=0.05, middle_flow_units=2)


def strides_and_rates(model, name):
    depthwise = model.get_layer(name).depthwise
    return depthwise.strides[0], depthwise.dilation_rate[0]


def check_pyramid(model, features, height, width, output_stride):
    assert model.output_stride == output_stride
    assert set(features) == {"P1", "P2", "P3", "P4", "P5"}
    for key, value in features.items():
        stride = min(2 ** int(key[1]), output_stride)
        expected = (1, -(-height // stride), -(-width // stride), model.pyramid_channels[key])
        assert tuple(value.shape) == expected, key


# (entry block 3 conv 3, middle flow, exit block 1 conv 3, exit block 2): (stride, rate)
XCEPTION65_STRIDES_AND_RATES = {
    8: [(1, 1), (1, 2), (1, 2), (1, 4)],
    16: [(2, 1), (1, 1), (1, 1), (1, 2)],
    32: [(2, 1), (1, 1), (2, 1), (1, 1)],
}


@pytest.mark.parametrize("depth", [65, 71])
@pytest.mark.parametrize("output_stride", [8, 16, 32])
def test_xception_pyramid_strides_and_atrous_rates(depth, output_stride, rng):
    model = build_backbone(f"xception{depth}", output_stride=output_stride, **NARROW)
    image = rng.uniform(0, 255, size=(1, 65, 48, 3)).astype("float32")
    check_pyramid(model, model(image), 65, 48, output_stride)
    if depth == 65:
        names = [
            "entry_flow_block3_sepconv3",
            "middle_flow_block1_unit2_sepconv1",
            "exit_flow_block1_sepconv3",
            "exit_flow_block2_sepconv2",
        ]
        expected = XCEPTION65_STRIDES_AND_RATES[output_stride]
        assert [strides_and_rates(model, name) for name in names] == expected
        shortcut = model.get_layer("exit_flow_block1_shortcut").conv
        assert shortcut.strides[0] == expected[2][0]
    else:
        # Xception-71: the 5th entry block is the stride-16 one.
        expected_stride = 1 if output_stride == 8 else 2
        assert strides_and_rates(model, "entry_flow_block5_sepconv3") == (expected_stride, 1)


def test_xception_block_structure():
    model = build_backbone("xception65", **NARROW)
    middle = model.get_layer("middle_flow_block1_unit1_sepconv1")
    assert isinstance(middle, SeparableConvBN)
    assert middle.pre_activation and not middle.depth_activation
    last = model.get_layer("exit_flow_block2_sepconv3")
    assert last.depth_activation and not last.pre_activation
    assert middle.bn_momentum == 0.9997 and middle.bn_epsilon == 1e-3
    names = {layer.name for layer in model.layers}
    assert "middle_flow_block1_unit2_add" in names  # identity skip
    assert "exit_flow_block2_shortcut" not in names and "exit_flow_block2_add" not in names
    assert "entry_flow_block1_shortcut" in names and "exit_flow_block1_shortcut" in names


def test_xception_relu_placement_of_the_paper_text(rng):
    """relu_placement="paper": ReLU after each BN of every separable conv, none before."""
    reference = build_backbone("xception65", **NARROW)
    paper = build_backbone("xception65", relu_placement="paper", **NARROW)
    separable = [layer for layer in paper.layers if isinstance(layer, SeparableConvBN)]
    assert separable and all(s.depth_activation and not s.pre_activation for s in separable)
    assert reference.count_params() == paper.count_params()
    paper.set_weights(reference.get_weights())
    image = rng.uniform(0, 255, size=(1, 33, 33, 3)).astype("float32")
    assert not np.allclose(paper(image)["P5"], reference(image)["P5"])
    with pytest.raises(ValueError, match="`relu_placement` must be one of"):
        build_backbone("xception65", relu_placement="after", **NARROW)


@pytest.mark.slow
def test_xception65_full_width_counts(rng):
    # DeepLabv3+ on Xception-65 totals 41,258,213 parameters; its separable ASPP + decoder
    # (21 classes) holds 3,205,701 of them, leaving 38,052,512 for the backbone.
    model = build_backbone("xception65", output_stride=16)
    trainable = sum(int(np.prod(w.shape)) for w in model.trainable_weights)
    assert (trainable, model.count_params()) == (37_867_312, 38_052_512)
    image = rng.uniform(0, 255, size=(1, 64, 64, 3)).astype("float32")
    features = model(image)
    check_pyramid(model, features, 64, 64, 16)
    assert model.pyramid_channels == {"P1": 64, "P2": 256, "P3": 256, "P4": 728, "P5": 2048}


def test_xception_unknown_size_grayscale(rng):
    model = build_backbone("xception71", input_shape=(None, None, 1), output_stride=16, **NARROW)
    for size in [(33, 40), (64, 64)]:
        image = rng.uniform(0, 255, size=(1, *size, 1)).astype("float32")
        check_pyramid(model, model(image), *size, 16)


@pytest.mark.parametrize(
    "kwargs,match",
    [
        (dict(middle_flow_units=0), "`middle_flow_units`"),
        (dict(width_multiplier=2.0), "`width_multiplier`"),
        (dict(output_stride=64), "`output_stride`"),
        (dict(input_shape=(None, None, 1), normalization="caffe"), "3-channel"),
    ],
)
def test_xception_argument_errors(kwargs, match):
    with pytest.raises(ValueError, match=match):
        build_backbone("xception65", **kwargs)
