import keras
import numpy as np
import pytest
import tensorflow as tf
from helpers.layer_test import config_clone

from keras_fusionseg.layers import (
    ConvBNReLU,
    ImageNormalization,
    ResizeToReference,
    SeparableConvBN,
)


@pytest.mark.parametrize("strides,dilation", [(1, 1), (2, 1), (1, 2)])
def test_conv_bn_relu_shapes_and_roundtrip(strides, dilation, rng):
    x = rng.normal(size=(2, 17, 16, 3)).astype("float32")
    layer = ConvBNReLU(8, 3, strides=strides, dilation_rate=dilation)
    y = layer(x)
    assert tuple(y.shape) == (2, -(-17 // strides), 16 // strides, 8)
    assert np.all(np.asarray(y) >= 0)
    np.testing.assert_allclose(config_clone(layer, x)(x), y, atol=1e-6)


def test_conv_bn_relu_matches_plain_conv_when_bn_off(rng):
    x = rng.normal(size=(1, 8, 8, 2)).astype("float32")
    layer = ConvBNReLU(4, 1, use_bn=False, activation=None, use_bias=False)
    y = layer(x)
    kernel = layer.conv.kernel.numpy()[0, 0]
    np.testing.assert_allclose(y, x @ kernel, atol=1e-5)


@pytest.mark.parametrize("strides", [1, 2])
def test_separable_conv_bn_shapes_and_roundtrip(strides, rng):
    x = rng.normal(size=(2, 16, 16, 4)).astype("float32")
    layer = SeparableConvBN(
        6, strides=strides, dilation_rate=2, pre_activation=True, depth_activation=False
    )
    y = layer(x)
    assert tuple(y.shape) == (2, 16 // strides, 16 // strides, 6)
    np.testing.assert_allclose(config_clone(layer, x)(x), y, atol=1e-6)
    # depthwise weights are not regularised, pointwise ones may be
    assert len(layer.trainable_weights) == 6


def test_resize_to_reference_unknown_size_in_function():
    layer = ResizeToReference()
    fn = tf.function(
        lambda a, b: layer([a, b]),
        input_signature=[
            tf.TensorSpec([None, None, None, 2]),
            tf.TensorSpec([None, None, None, 1]),
        ],
    )
    y = fn(tf.ones([1, 3, 5, 2]), tf.zeros([1, 12, 20, 1]))
    assert tuple(y.shape) == (1, 12, 20, 2)
    np.testing.assert_allclose(y, 1.0)
    nearest = ResizeToReference("nearest")(
        [tf.constant([[[[1.0], [2.0]]]]), tf.zeros([1, 1, 4, 1])]
    )
    np.testing.assert_array_equal(np.asarray(nearest).ravel(), [1, 1, 2, 2])


def test_image_normalization_modes():
    x = np.array([[[[0.0, 127.5, 255.0]]]], "float32")
    np.testing.assert_allclose(ImageNormalization("tf")(x), [[[[-1, 0, 1]]]])
    caffe = np.asarray(ImageNormalization("caffe")(x))
    np.testing.assert_allclose(caffe, [[[[255 - 103.939, 127.5 - 116.779, -123.68]]]], rtol=1e-5)
    with pytest.raises(ValueError, match="mode"):
        ImageNormalization("bogus")


def test_invalid_arguments_name_the_argument():
    with pytest.raises(ValueError, match="filters"):
        ConvBNReLU(0)
    with pytest.raises(ValueError, match="dilation_rate"):
        ConvBNReLU(4, strides=2, dilation_rate=2)
    with pytest.raises(ValueError, match="interpolation"):
        ResizeToReference("cubic")


def test_image_normalization_rejects_gray_for_rgb_means():
    with pytest.raises(ValueError, match="3 \\(RGB\\) input channels"):
        ImageNormalization("caffe")(np.zeros((1, 4, 4, 1), "float32"))


def test_dilated_branches_survive_partly_known_shapes():
    # Regression: Keras' dilated convs lower to SpaceToBatchND; with batch known and height
    # unknown (what `model.predict` traces on a second input size), Grappler folded the
    # paddings from a wrong height and the op failed. Our layers need no run-time shapes
    # (layers/atrous.py; numerics in test_dilated_convs.py).
    inputs = keras.Input((None, None, 2))
    x = keras.layers.Conv2D(4, 3, strides=8, padding="same")(inputs)
    branches = [ConvBNReLU(4, 1)(x), ConvBNReLU(4, 3, dilation_rate=3)(x)]
    branches.append(SeparableConvBN(4, dilation_rate=3)(x))
    model = keras.Model(inputs, keras.layers.Concatenate()(branches))
    fn = tf.function(model, input_signature=[tf.TensorSpec([1, None, 64, 2])])
    for height in (96, 104):
        assert tuple(fn(tf.zeros([1, height, 64, 2])).shape) == (1, height // 8, 8, 12)
    model.predict(np.zeros((1, 64, 64, 2), "float32"), verbose=0)
    assert model.predict(np.zeros((1, 104, 64, 2), "float32"), verbose=0).shape == (1, 13, 8, 12)
