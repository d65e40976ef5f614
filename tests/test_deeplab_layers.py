"""ASPP and the DeepLabv3+ decoder: shapes, serialization, NumPy reference, unknown sizes."""

import numpy as np
import pytest
import tensorflow as tf
from helpers.layer_test import config_clone

from keras_fusionseg.layers.deeplabv3plus import ASPP, DeepLabV3PlusDecoder

# ---------------------------------------------------------------- NumPy reference


def np_conv(x, kernel, rate=1):
    """Stride-1 SAME conv (dilated) of NHWC `x` with an HWIO kernel."""
    kh, kw = kernel.shape[:2]
    n, h, w, _ = x.shape
    pads = []
    for k in (kh, kw):
        total = (k - 1) * rate
        pads.append((total // 2, total - total // 2))
    xp = np.pad(x, ((0, 0), pads[0], pads[1], (0, 0)))
    out = np.zeros((n, h, w, kernel.shape[-1]))
    for i in range(kh):
        for j in range(kw):
            out += xp[:, i * rate : i * rate + h, j * rate : j * rate + w, :] @ kernel[i, j]
    return out


def np_depthwise(x, kernel, rate=1):
    """Stride-1 SAME depthwise conv with a (kh, kw, C, 1) kernel."""
    kh, kw = kernel.shape[:2]
    n, h, w, c = x.shape
    pads = []
    for k in (kh, kw):
        total = (k - 1) * rate
        pads.append((total // 2, total - total // 2))
    xp = np.pad(x, ((0, 0), pads[0], pads[1], (0, 0)))
    out = np.zeros((n, h, w, c))
    for i in range(kh):
        for j in range(kw):
            out += xp[:, i * rate : i * rate + h, j * rate : j * rate + w, :] * kernel[i, j, :, 0]
    return out


def np_bn(x, bn):
    gamma, beta, mean, var = (np.asarray(v, dtype="float64") for v in bn.get_weights())
    return (x - mean) / np.sqrt(var + bn.epsilon) * gamma + beta


def relu(x):
    return np.maximum(x, 0.0)


def np_conv_bn_relu(x, layer, rate=1):
    """Reads only weights from `layer`; the dilation rate comes from the caller."""
    return relu(np_bn(np_conv(x, layer.conv.kernel.numpy(), rate), layer.bn))


def np_separable(x, layer, rate=1):
    y = relu(np_bn(np_depthwise(x, layer.depthwise.kernel.numpy(), rate), layer.depthwise_bn))
    return relu(np_bn(np_conv(y, layer.pointwise.kernel.numpy()), layer.pointwise_bn))


def np_resize_bilinear(x, out_h, out_w):
    """Half-pixel-centre bilinear resize, as `tf.image.resize` without antialiasing."""

    def weights(out_size, in_size):
        scale = in_size / out_size
        src = (np.arange(out_size) + 0.5) * scale - 0.5
        floor = np.floor(src)
        lower = np.maximum(floor, 0).astype(int)
        upper = np.minimum(np.ceil(src), in_size - 1).astype(int)
        return lower, upper, src - floor

    top, bottom, dy = weights(out_h, x.shape[1])
    left, right, dx = weights(out_w, x.shape[2])
    rows = x[:, top] * (1 - dy)[None, :, None, None] + x[:, bottom] * dy[None, :, None, None]
    return (
        rows[:, :, left] * (1 - dx)[None, None, :, None]
        + rows[:, :, right] * dx[None, None, :, None]
    )


def np_aspp(x, layer, rates, separable):
    """DeepLabv3 Sec. 3.3: [pool, 1x1, atrous 3x3 ...] -> concat -> 1x1 projection.

    `rates` and `separable` are the arguments the test built the layer with, never read back
    from the layer, so a branch that ignores its rate cannot agree with the reference.
    """
    n, h, w, _ = x.shape
    pooled = np_conv_bn_relu(x.mean(axis=(1, 2), keepdims=True), layer.pooling_conv)
    branches = [
        np.broadcast_to(pooled, (n, h, w, pooled.shape[-1])),
        np_conv_bn_relu(x, layer.conv1x1),
    ]
    assert len(layer.atrous_convs) == len(rates)
    for conv, rate in zip(layer.atrous_convs, rates, strict=True):
        branch = np_separable if separable else np_conv_bn_relu
        branches.append(branch(x, conv, rate))
    return np_conv_bn_relu(np.concatenate(branches, axis=-1), layer.projection)


def np_decoder(encoder, low, layer, separable):
    """DeepLabv3+ Sec. 3.1: [resize(encoder), 1x1(low)] -> two 3x3 -> 1x1 logits with bias."""
    low = np_conv_bn_relu(low, layer.low_level_projection)
    y = np.concatenate([np_resize_bilinear(encoder, *low.shape[1:3]), low], axis=-1)
    for conv in layer.refine_convs:
        y = np_separable(y, conv) if separable else np_conv_bn_relu(y, conv)
    return np_conv(y, layer.classifier.kernel.numpy()) + layer.classifier.bias.numpy()


def randomize_batch_norms(layer, rng):
    """Non-trivial BN statistics so that the reference check sees every term."""
    for weight in layer.weights:
        name = weight.path.split("/")[-1]
        if name in ("gamma", "moving_variance"):
            weight.assign(rng.uniform(0.5, 1.5, size=weight.shape))
        elif name in ("beta", "moving_mean"):
            weight.assign(rng.normal(scale=0.3, size=weight.shape))


# ---------------------------------------------------------------- ASPP


@pytest.mark.parametrize("separable", [False, True])
def test_aspp_matches_numpy_reference(separable, rng):
    x = rng.normal(size=(2, 9, 11, 5)).astype("float32")
    rates = (1, 2, 4)
    layer = ASPP(filters=6, atrous_rates=rates, separable=separable)
    layer(x)
    randomize_batch_norms(layer, rng)
    y = layer(x, training=False)
    assert tuple(y.shape) == (2, 9, 11, 6)
    expected = np_aspp(x.astype("float64"), layer, rates, separable)
    np.testing.assert_allclose(y, expected, atol=1e-5, rtol=1e-5)
    # The rates matter at this size: the same weights without dilation differ.
    undilated = np_aspp(x.astype("float64"), layer, (1, 1, 1), separable)
    assert np.abs(undilated - expected).max() > 1e-2


def test_aspp_image_pooling_branch_is_constant_over_space(rng):
    x = rng.normal(size=(1, 7, 6, 3)).astype("float32")
    layer = ASPP(filters=4, atrous_rates=(2,))
    layer(x)
    pooled = layer.pooling_conv(tf.reduce_mean(x, axis=[1, 2], keepdims=True))
    expected = np_conv_bn_relu(
        x.astype("float64").mean(axis=(1, 2), keepdims=True), layer.pooling_conv
    )
    np.testing.assert_allclose(pooled, expected, atol=1e-5)
    assert layer.projection.conv.kernel.shape == (1, 1, 3 * 4, 4)


def test_aspp_without_image_pooling_has_one_branch_less():
    layer = ASPP(filters=4, atrous_rates=(1, 2), image_pooling=False)
    layer(np.zeros((1, 5, 5, 3), "float32"))
    assert layer.pooling_conv is None
    assert layer.projection.conv.kernel.shape == (1, 1, 3 * 4, 4)


def test_aspp_parameter_count_at_paper_width():
    """2048 input channels, 256 filters, separable: the count of the reference layout."""
    layer = ASPP(filters=256, separable=True)
    layer.build((None, None, None, 2048))
    bn = 4 * 256  # gamma, beta, moving mean, moving variance
    separable_branch = 9 * 2048 + 4 * 2048 + 2048 * 256 + bn
    expected = 2 * (2048 * 256 + bn) + 3 * separable_branch + 1280 * 256 + bn
    assert layer.count_params() == expected


@pytest.mark.parametrize("separable", [False, True])
def test_aspp_config_roundtrip(separable, rng):
    x = rng.normal(size=(1, 8, 8, 4)).astype("float32")
    layer = ASPP(
        filters=4, atrous_rates=(1, 3), separable=separable, dropout=0.2, kernel_regularizer="l2"
    )
    y = layer(x)
    clone = config_clone(layer, x)
    assert clone.get_config() == layer.get_config()
    np.testing.assert_allclose(clone(x), y, atol=1e-6)


def test_aspp_unknown_spatial_size_in_tf_function(rng):
    layer = ASPP(filters=4, atrous_rates=(1, 2, 3))
    fn = tf.function(
        lambda x: layer(x, training=False),
        input_signature=[tf.TensorSpec((None, None, None, 3), tf.float32)],
    )
    for h, w in ((5, 7), (12, 9)):
        x = rng.normal(size=(2, h, w, 3)).astype("float32")
        np.testing.assert_allclose(fn(x), layer(x, training=False), atol=1e-5)
        assert tuple(fn(x).shape) == (2, h, w, 4)


@pytest.mark.parametrize(
    "kwargs,argument",
    [
        ({"filters": 0}, "filters"),
        ({"atrous_rates": (6, 0)}, "atrous_rates"),
        ({"atrous_rates": 6}, "atrous_rates"),
        ({"atrous_rates": ()}, "atrous_rates"),
        ({"dropout": 1.0}, "dropout"),
    ],
)
def test_aspp_bad_arguments(kwargs, argument):
    with pytest.raises(ValueError, match=argument):
        ASPP(**kwargs)


# ---------------------------------------------------------------- decoder


@pytest.mark.parametrize("separable", [False, True])
def test_decoder_matches_numpy_reference(separable, rng):
    encoder = rng.normal(size=(2, 3, 4, 6)).astype("float32")
    low = rng.normal(size=(2, 9, 14, 5)).astype("float32")
    layer = DeepLabV3PlusDecoder(num_classes=3, filters=7, low_level_filters=4, separable=separable)
    layer([encoder, low])
    randomize_batch_norms(layer, rng)
    layer.classifier.bias.assign(rng.normal(size=3))
    y = layer([encoder, low], training=False)
    assert tuple(y.shape) == (2, 9, 14, 3)
    expected = np_decoder(encoder.astype("float64"), low.astype("float64"), layer, separable)
    np.testing.assert_allclose(y, expected, atol=1e-5, rtol=1e-5)


def test_numpy_bilinear_matches_tf(rng):
    x = rng.normal(size=(1, 3, 5, 2)).astype("float32")
    np.testing.assert_allclose(tf.image.resize(x, (8, 7)), np_resize_bilinear(x, 8, 7), atol=1e-5)


def test_decoder_config_roundtrip_and_widths(rng):
    encoder = rng.normal(size=(1, 2, 2, 8)).astype("float32")
    low = rng.normal(size=(1, 8, 8, 6)).astype("float32")
    layer = DeepLabV3PlusDecoder(num_classes=2, filters=5, low_level_filters=3, separable=True)
    y = layer([encoder, low])
    assert layer.refine_convs[0].depthwise.kernel.shape == (3, 3, 8 + 3, 1)
    assert layer.classifier.bias is not None
    clone = config_clone(layer, [encoder, low])
    assert clone.get_config() == layer.get_config()
    np.testing.assert_allclose(clone([encoder, low]), y, atol=1e-6)


def test_decoder_unknown_spatial_size_in_tf_function(rng):
    layer = DeepLabV3PlusDecoder(num_classes=2, filters=4, low_level_filters=3)
    fn = tf.function(
        lambda a, b: layer([a, b], training=False),
        input_signature=[
            tf.TensorSpec((None, None, None, 4), tf.float32),
            tf.TensorSpec((None, None, None, 5), tf.float32),
        ],
    )
    for h, w in ((3, 4), (5, 2)):
        a = rng.normal(size=(1, h, w, 4)).astype("float32")
        b = rng.normal(size=(1, 4 * h + 1, 4 * w + 1, 5)).astype("float32")
        y = fn(a, b)
        assert tuple(y.shape) == (1, 4 * h + 1, 4 * w + 1, 2)
        np.testing.assert_allclose(y, layer([a, b], training=False), atol=1e-5)


@pytest.mark.parametrize(
    "kwargs,argument",
    [
        ({"num_classes": 0}, "num_classes"),
        ({"num_classes": 2, "filters": -1}, "filters"),
        ({"num_classes": 2, "low_level_filters": 2.5}, "low_level_filters"),
    ],
)
def test_decoder_bad_arguments(kwargs, argument):
    with pytest.raises(ValueError, match=argument):
        DeepLabV3PlusDecoder(**kwargs)
