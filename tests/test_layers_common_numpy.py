"""ConvBNReLU and SeparableConvBN against independent NumPy: strided padding, pre-activation.

Shapes alone cannot tell explicit "same" padding from Keras' `padding="same"` (both give
ceil(n / stride) outputs), nor a ReLU applied before the depthwise conv from none: these tests
compare values. The reference pads as the DeepLab reference code's `fixed_padding` does:
(k_eff - 1) // 2 before and the rest after, k_eff = k + (k - 1)(rate - 1), then a VALID conv.
"""

import numpy as np
import pytest

from keras_fusionseg.layers import ConvBNReLU, SeparableConvBN


def fixed_padding(x, kernel_size, rate=1):
    effective = kernel_size + (kernel_size - 1) * (rate - 1)
    before = (effective - 1) // 2
    after = effective - 1 - before
    return np.pad(x, ((0, 0), (before, after), (before, after), (0, 0)))


def np_valid_conv(x, kernel, stride=1, rate=1, depthwise=False):
    """VALID conv of NHWC `x`; kernel HWIO, or (kh, kw, C, 1) when `depthwise`."""
    kh, kw = kernel.shape[:2]
    n, h, w, c = x.shape
    out_h = (h - (kh - 1) * rate - 1) // stride + 1
    out_w = (w - (kw - 1) * rate - 1) // stride + 1
    out = np.zeros((n, out_h, out_w, c if depthwise else kernel.shape[-1]))
    for i in range(kh):
        for j in range(kw):
            rows = slice(i * rate, i * rate + (out_h - 1) * stride + 1, stride)
            cols = slice(j * rate, j * rate + (out_w - 1) * stride + 1, stride)
            patch = x[:, rows, cols, :]
            out += patch * kernel[i, j, :, 0] if depthwise else patch @ kernel[i, j]
    return out


def np_bn(x, bn):
    gamma, beta, mean, var = (np.asarray(v, "float64") for v in bn.get_weights())
    return (x - mean) / np.sqrt(var + bn.epsilon) * gamma + beta


def randomize(layer, rng):
    for variable in layer.weights:
        name = variable.path.rsplit("/", 1)[-1]
        if name in ("gamma", "moving_variance"):
            variable.assign(rng.uniform(0.5, 1.5, variable.shape))
        elif name in ("beta", "moving_mean", "bias"):
            variable.assign(rng.normal(0, 0.3, variable.shape))


@pytest.mark.parametrize("height,width", [(16, 16), (17, 14)])
@pytest.mark.parametrize("kernel_size", [3, 5])
def test_strided_conv_bn_relu_pads_like_the_reference(height, width, kernel_size, rng):
    x = rng.normal(size=(2, height, width, 3)).astype("float32")
    layer = ConvBNReLU(4, kernel_size, strides=2, use_bias=True)
    layer(x)
    randomize(layer, rng)
    y = np.asarray(layer(x, training=False))
    padded = fixed_padding(x.astype("float64"), kernel_size)
    conv = np_valid_conv(padded, layer.conv.kernel.numpy(), stride=2) + layer.conv.bias.numpy()
    expected = np.maximum(np_bn(conv, layer.bn), 0.0)
    assert y.shape == (2, -(-height // 2), -(-width // 2), 4)
    np.testing.assert_allclose(y, expected, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("strides,rate", [(1, 1), (2, 1), (1, 2)])
@pytest.mark.parametrize("pre_activation,depth_activation", [(True, False), (False, True)])
def test_separable_conv_bn_matches_reference(strides, rate, pre_activation, depth_activation, rng):
    # Inputs of both signs: a ReLU before the depthwise conv changes them.
    x = rng.normal(size=(1, 12, 11, 3)).astype("float32")
    layer = SeparableConvBN(
        5,
        strides=strides,
        dilation_rate=rate,
        pre_activation=pre_activation,
        depth_activation=depth_activation,
    )
    layer(x)
    randomize(layer, rng)
    y = np.asarray(layer(x, training=False))

    def act(v):
        return np.maximum(v, 0.0) if depth_activation else v

    z = x.astype("float64")
    if pre_activation:
        z = np.maximum(z, 0.0)
    z = fixed_padding(z, 3, rate)
    z = np_valid_conv(z, layer.depthwise.kernel.numpy(), strides, rate, depthwise=True)
    z = act(np_bn(z, layer.depthwise_bn))
    z = act(np_bn(np_valid_conv(z, layer.pointwise.kernel.numpy()), layer.pointwise_bn))
    assert y.shape == z.shape
    np.testing.assert_allclose(y, z, atol=1e-5, rtol=1e-5)
