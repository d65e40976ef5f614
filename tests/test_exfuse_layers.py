"""GCN and ExFuse blocks: NumPy references (all weights random, biases included), shapes,
serialization."""

import keras
import numpy as np
import pytest
import tensorflow as tf
from helpers.layer_test import config_clone

from keras_fusionseg.layers.exfuse import (
    BoundaryRefinement,
    DeconvolutionUpsample,
    DenselyAdjacentPrediction,
    ExplicitChannelResolutionEmbedding,
    GlobalConvolution,
    SemanticEmbeddingBranch,
    UpsampleBilinear,
)


def randomize(layer, rng):
    """Random values for every weight, biases included (Keras starts them at zero, which would
    make the bias terms of the references below vacuous); returns the layer."""
    biases = [w for w in layer.weights if w.name == "bias"]
    assert biases, "expected biased convolutions"
    for weight in layer.weights:
        weight.assign(rng.normal(0, 0.5, tuple(weight.shape)).astype("float32"))
    assert all(np.abs(b.numpy()).min() > 0 for b in biases)
    return layer


def conv_same(x, kernel, bias=None):
    """NumPy stride-1 "same" cross-correlation (odd kernels), x (B, H, W, Ci), kernel (kh, kw, Ci, Co)."""
    kh, kw = kernel.shape[:2]
    pad = np.pad(x, ((0, 0), (kh // 2, kh // 2), (kw // 2, kw // 2), (0, 0)))
    h, w = x.shape[1:3]
    y = np.zeros((*x.shape[:3], kernel.shape[-1]))
    for a in range(kh):
        for b in range(kw):
            y += pad[:, a : a + h, b : b + w] @ kernel[a, b]
    return y if bias is None else y + bias


def dap_reference(x, k):
    """Eq. 3 of ExFuse with channel g * C + c = class c of group g = l*k + m, zeros outside."""
    b, h, w, ck = x.shape
    c = ck // (k * k)
    r = np.zeros((b, h, w, c))
    for i in range(h):
        for j in range(w):
            for l in range(k):  # noqa: E741
                for m in range(k):
                    ii, jj = i + l - k // 2, j + m - k // 2
                    if 0 <= ii < h and 0 <= jj < w:
                        g = l * k + m
                        r[:, i, j] += x[:, ii, jj, g * c : (g + 1) * c]
    return r / (k * k)


@pytest.mark.parametrize("k", [3, 5])
def test_densely_adjacent_prediction_is_eq3(k, rng):
    x = rng.normal(size=(2, 7, 6, 4 * k * k)).astype("float32")
    layer = DenselyAdjacentPrediction(k)
    y = np.asarray(layer(x))
    assert y.shape == (2, 7, 6, 4)
    np.testing.assert_allclose(y, dap_reference(x, k), atol=1e-6)
    np.testing.assert_allclose(config_clone(layer, x)(x), y, atol=1e-7)
    assert not layer.weights


def test_densely_adjacent_prediction_constant_input(rng):
    values = rng.normal(size=(9 * 3,)).astype("float32")
    x = np.broadcast_to(values, (1, 8, 8, 27)).copy()
    y = np.asarray(DenselyAdjacentPrediction(3)(x))
    expected = values.reshape(9, 3).mean(0)
    np.testing.assert_allclose(y[0, 1:-1, 1:-1], np.broadcast_to(expected, (6, 6, 3)), atol=1e-6)
    assert not np.allclose(y[0, 0, 0], expected)  # the border sees zeros


def test_densely_adjacent_prediction_offset_sign():
    """Group g = l*k + m at (p, q) predicts the pixel (p + k//2 - l, q + k//2 - m)."""
    x = np.zeros((1, 5, 5, 9), "float32")
    x[0, 2, 2, 0] = 9.0  # group 0 (l = m = 0), one class
    x[0, 2, 2, 8] = 18.0  # group 8 (l = m = 2)
    y = np.asarray(DenselyAdjacentPrediction(3)(x))[0, :, :, 0]
    expected = np.zeros((5, 5), "float32")
    expected[3, 3] = 1.0  # lower-right neighbour
    expected[1, 1] = 2.0  # upper-left neighbour
    np.testing.assert_allclose(y, expected, atol=1e-6)


def test_densely_adjacent_prediction_errors():
    with pytest.raises(ValueError, match="kernel_size"):
        DenselyAdjacentPrediction(2)
    with pytest.raises(ValueError, match="num_classes \\* 9"):
        DenselyAdjacentPrediction(3)(np.zeros((1, 4, 4, 10), "float32"))


def test_global_convolution_matches_numpy(rng):
    x = rng.normal(size=(1, 9, 8, 3)).astype("float32")
    layer = GlobalConvolution(4, kernel_size=5)
    layer.build(x.shape)
    y = np.asarray(randomize(layer, rng)(x))
    p = {w.path.split("/")[-2] + "/" + w.name: w.numpy() for w in layer.weights}
    left = conv_same(conv_same(x, p["left_kx1/kernel"], p["left_kx1/bias"]), p["left_1xk/kernel"])
    left += p["left_1xk/bias"]
    right = conv_same(
        conv_same(x, p["right_1xk/kernel"], p["right_1xk/bias"]), p["right_kx1/kernel"]
    )
    right += p["right_kx1/bias"]
    np.testing.assert_allclose(y, left + right, atol=1e-5)
    assert p["left_kx1/kernel"].shape == (5, 1, 3, 4)
    assert p["left_1xk/kernel"].shape == (1, 5, 4, 4)
    np.testing.assert_allclose(config_clone(layer, x)(x), y, atol=1e-6)
    assert GlobalConvolution(4).kernel_size == 15
    with pytest.raises(ValueError, match="kernel_size"):
        GlobalConvolution(4, kernel_size=4)


def test_boundary_refinement_matches_numpy(rng):
    x = rng.normal(size=(2, 6, 5, 3)).astype("float32")
    layer = BoundaryRefinement()
    layer.build(x.shape)
    y = np.asarray(randomize(layer, rng)(x))
    k1, b1, k2, b2 = (w.numpy() for w in layer.weights)
    expected = x + conv_same(np.maximum(conv_same(x, k1, b1), 0), k2, b2)
    np.testing.assert_allclose(y, expected, atol=1e-5)
    np.testing.assert_allclose(config_clone(layer, x)(x), y, atol=1e-6)


def test_semantic_embedding_branch_is_eq2_product(rng):
    low = rng.normal(size=(1, 8, 8, 4)).astype("float32")
    high1 = rng.normal(size=(1, 4, 4, 6)).astype("float32")
    high2 = rng.normal(size=(1, 2, 2, 5)).astype("float32")
    layer = SemanticEmbeddingBranch()
    layer.build([low.shape, high1.shape, high2.shape])
    y = np.asarray(randomize(layer, rng)([low, high1, high2]))
    assert y.shape == low.shape
    k1, b1, k2, b2 = (w.numpy() for w in layer.weights)
    up1 = tf.image.resize(conv_same(high1, k1, b1), (8, 8), method="bilinear").numpy()
    up2 = tf.image.resize(conv_same(high2, k2, b2), (8, 8), method="bilinear").numpy()
    np.testing.assert_allclose(y, low * up1 * up2, atol=1e-5)
    inputs = [low, high1, high2]
    np.testing.assert_allclose(config_clone(layer, inputs)(inputs), y, atol=1e-6)
    with pytest.raises(ValueError, match="at least two"):
        SemanticEmbeddingBranch()([low])


def test_semantic_embedding_branch_starts_as_identity(rng):
    # identity_init: every factor is 1 before training, so the low level passes unchanged;
    # Keras' defaults (identity_init=False) multiply it by random-sign factors.
    shapes = [(2, 8, 8, 4), (2, 4, 4, 6), (2, 2, 2, 5)]
    inputs = [rng.normal(size=shape).astype("float32") for shape in shapes]
    low = inputs[0]
    np.testing.assert_array_equal(SemanticEmbeddingBranch()(inputs), low)
    glorot = np.asarray(SemanticEmbeddingBranch(identity_init=False)(inputs))
    assert np.abs(glorot - low).mean() > 0.1
    layer = SemanticEmbeddingBranch(identity_init=False)
    assert keras.layers.deserialize(keras.layers.serialize(layer)).identity_init is False
    with pytest.raises(ValueError, match="needs `use_bias=True`"):
        SemanticEmbeddingBranch(use_bias=False)
    SemanticEmbeddingBranch(use_bias=False, identity_init=False)  # Glorot without biases: fine


def test_ecre_is_conv_then_depth_to_space(rng):
    x = rng.normal(size=(1, 3, 4, 5)).astype("float32")
    layer = ExplicitChannelResolutionEmbedding(2)
    layer.build(x.shape)
    y = np.asarray(randomize(layer, rng)(x))
    assert y.shape == (1, 6, 8, 2)
    kernel, bias = (w.numpy() for w in layer.weights)
    z = conv_same(x, kernel, bias)  # (1, 3, 4, 8)
    for a in range(2):
        for b in range(2):
            np.testing.assert_allclose(
                y[:, a::2, b::2], z[..., (a * 2 + b) * 2 : (a * 2 + b + 1) * 2], atol=1e-5
            )
    cropped = layer([x, np.zeros((1, 5, 7, 1), "float32")])
    np.testing.assert_allclose(cropped, y[:, :5, :7], atol=1e-6)
    np.testing.assert_allclose(config_clone(layer, x)(x), y, atol=1e-6)


def test_upsample_bilinear_unknown_size():
    layer = UpsampleBilinear(2)
    fn = tf.function(layer, input_signature=[tf.TensorSpec([None, None, None, 3])])
    assert tuple(fn(tf.zeros((1, 3, 5, 3))).shape) == (1, 6, 10, 3)
    assert config_clone(layer, np.zeros((1, 2, 2, 3))).factor == 2


def test_deconvolution_upsample_starts_bilinear_and_crops(rng):
    """GCN's deconvolution, bilinear-initialised: equals tf.image.resize (half-pixel
    centres) away from the one-pixel border; odd references crop the x2 output."""
    x = rng.normal(size=(2, 5, 7, 3)).astype("float32")
    layer = DeconvolutionUpsample(3)
    y = np.asarray(layer(x))
    assert y.shape == (2, 10, 14, 3)
    bilinear = tf.image.resize(x, (10, 14), method="bilinear").numpy()
    np.testing.assert_allclose(y[:, 1:-1, 1:-1], bilinear[:, 1:-1, 1:-1], atol=1e-5)
    reference = np.zeros((2, 9, 13, 1), "float32")
    cropped = np.asarray(layer([x, reference]))
    np.testing.assert_array_equal(cropped, y[:, :9, :13])
    assert len(layer.trainable_weights) == 1  # learnt, unlike sub-pixel upsampling
    np.testing.assert_allclose(config_clone(layer, x)(x), y, atol=1e-6)
    with pytest.raises(ValueError, match="`bilinear_init` needs 4 input channels"):
        DeconvolutionUpsample(4)(x)
    assert DeconvolutionUpsample(4, bilinear_init=False)(x).shape == (2, 10, 14, 4)
