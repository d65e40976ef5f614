"""Parameter and multiply-add counting against hand counts."""

import keras
import pytest

from keras_fusionseg.utils import count_macs, count_parameters, macs_by_op_type


def tiny_conv_net(input_shape=(None, None, 3)):
    inputs = keras.Input(input_shape)
    x = keras.layers.Conv2D(4, 3, padding="same", use_bias=False)(inputs)
    x = keras.layers.BatchNormalization()(x)
    x = keras.layers.ReLU()(x)
    x = keras.layers.Conv2D(6, 3, strides=2, padding="valid")(x)
    x = keras.layers.DepthwiseConv2D(3, padding="same", dilation_rate=2, use_bias=False)(x)
    x = keras.layers.Conv2D(5, 3, padding="same", dilation_rate=3)(x)
    x = keras.layers.GlobalAveragePooling2D()(x)
    outputs = keras.layers.Dense(7)(x)
    return keras.Model(inputs, outputs)


def hand_count(h, w):
    """MACs of `tiny_conv_net` on an h x w image: output pixels x kernel x in x out."""
    h2, w2 = (h - 3) // 2 + 1, (w - 3) // 2 + 1
    conv = h * w * 9 * 3 * 4
    strided = h2 * w2 * 9 * 4 * 6
    depthwise = h2 * w2 * 9 * 6
    dilated = h2 * w2 * 9 * 6 * 5
    dense = 5 * 7
    return {"Conv2D": conv + strided + dilated, "DepthwiseConv2dNative": depthwise, "MatMul": dense}


@pytest.mark.parametrize("size", [(16, 16), (19, 23)])
def test_count_macs_matches_hand_count(size):
    model = tiny_conv_net()
    assert macs_by_op_type(model, size) == hand_count(*size)
    assert count_macs(model, size) == sum(hand_count(*size).values())


def test_count_macs_can_include_space_to_batch_padding():
    model = tiny_conv_net()
    # 19x23 -> 9x11 after the strided conv: rate 2 pads to 10x12, rate 3 to 9x12.
    padded = count_macs(model, (19, 23), count_dilation_padding=True)
    expected = sum(hand_count(19, 23).values()) + (10 * 12 - 99) * 9 * 6 + (9 * 12 - 99) * 9 * 30
    assert padded == expected


def test_count_macs_scales_with_batch():
    model = tiny_conv_net()
    assert count_macs(model, 16, batch_size=3) == 3 * count_macs(model, 16)


def test_count_parameters_splits_trainable_and_moving_statistics():
    counts = count_parameters(tiny_conv_net())
    trainable = 27 * 4 + 2 * 4 + (36 * 6 + 6) + 9 * 6 + (54 * 5 + 5) + (5 * 7 + 7)
    assert counts == {"trainable": trainable, "non_trainable": 2 * 4, "total": trainable + 8}


@pytest.mark.parametrize("size", [0, (16,), (16, "a"), 16.0])
def test_count_macs_bad_input_size(size):
    with pytest.raises(ValueError, match="input_size"):
        count_macs(tiny_conv_net(), size)


def test_count_macs_fixed_input_size_mismatch():
    with pytest.raises(ValueError, match="fixed input height"):
        count_macs(tiny_conv_net((16, 16, 3)), (32, 16))
