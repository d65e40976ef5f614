"""GFF paper blocks: PyramidPooling, GatedFullyFusion (eq. 5), DenseFeaturePyramid (eq. 6)."""

import gff_fastfcn_numpy as ref
import keras
import numpy as np
import pytest
import tensorflow as tf
from helpers.layer_test import keras_file_roundtrip

from keras_fusionseg.layers.gff import (
    DenseFeaturePyramid,
    GatedFullyFusion,
    PyramidPooling,
    adaptive_average_pool,
)


@pytest.mark.parametrize("size", [(7, 5), (12, 12), (2, 3)])
def test_adaptive_average_pool_matches_numpy(size, rng):
    x = rng.normal(size=(2, *size, 3)).astype("float32")
    for bins in (1, 2, 3, 6):
        np.testing.assert_allclose(
            adaptive_average_pool(tf.constant(x), bins).numpy(),
            ref.adaptive_average_pool(x, bins),
            atol=1e-5,
        )


def test_pyramid_pooling_matches_numpy(rng):
    layer = PyramidPooling(bins=(1, 2, 3, 6), reduction_filters=3)
    x = rng.normal(size=(2, 9, 7, 8)).astype("float32")
    layer(x)
    ref.randomize_weights(layer, rng)
    expected = [x]
    for bins, branch in zip(layer.bins, layer.branches, strict=True):
        pooled = ref.conv_bn_relu(ref.adaptive_average_pool(x, bins), branch)
        expected.append(ref.resize_bilinear(pooled, 9, 7))
    np.testing.assert_allclose(
        layer(x, training=False).numpy(), np.concatenate(expected, -1), atol=1e-5
    )


def test_pyramid_pooling_shapes_unknown_size_and_roundtrip(tmp_path, rng):
    inputs = keras.Input((None, None, 16))
    model = keras.Model(inputs, PyramidPooling()(inputs))
    assert model.output_shape == (None, None, None, 32)
    for size in [(8, 8), (13, 5), (1, 1)]:
        x = rng.normal(size=(1, *size, 16)).astype("float32")
        assert model(x).shape == (1, *size, 32)
    keras_file_roundtrip(model, rng.normal(size=(2, 11, 6, 16)).astype("float32"), tmp_path)


def test_pyramid_pooling_rejects_bad_arguments():
    with pytest.raises(ValueError, match="`bins`.*received \\(\\)"):
        PyramidPooling(bins=())
    with pytest.raises(ValueError, match="`bins`"):
        PyramidPooling(bins=(1, 0))
    with pytest.raises(ValueError, match="`reduction_filters`.*-1"):
        PyramidPooling(reduction_filters=-1)


def gff_numpy(levels, kernels, biases, sequential):
    """Eq. 5: X~_l = (1 + G_l) X_l + (1 - G_l) sum_{i != l} G_i X_i, resized to level l."""
    gates = [
        ref.sigmoid(ref.conv2d(x, k, bias=b))
        for x, k, b in zip(levels, kernels, biases, strict=True)
    ]
    features = list(levels)
    fused = []
    for level, x_l in enumerate(levels):
        h, w = x_l.shape[1:3]
        received = sum(
            ref.resize_bilinear(gates[i] * features[i], h, w)
            for i in range(len(levels))
            if i != level
        )
        x_new = (1 + gates[level]) * x_l + (1 - gates[level]) * received
        fused.append(x_new)
        if sequential:
            features[level] = x_new
    return fused, gates


@pytest.mark.parametrize(
    "per_channel_gates,sequential,use_bias",
    [(False, False, False), (False, False, True), (True, True, True), (True, False, False)],
)
def test_gated_fully_fusion_matches_eq5(per_channel_gates, sequential, use_bias, rng):
    sizes = [(16, 12), (8, 6), (8, 6), (4, 3)]
    levels = [rng.normal(size=(2, *s, 5)).astype("float32") for s in sizes]
    layer = GatedFullyFusion(
        per_channel_gates=per_channel_gates, sequential=sequential, use_bias=use_bias
    )
    layer(levels)
    ref.randomize_weights(layer, rng)
    kernels = [conv.kernel.numpy() for conv in layer.gate_convs]
    biases = [conv.bias.numpy() if use_bias else None for conv in layer.gate_convs]
    fused, gates = layer(levels)
    expected_fused, expected_gates = gff_numpy(levels, kernels, biases, sequential)
    for got, want in zip(fused + gates, expected_fused + expected_gates, strict=True):
        np.testing.assert_allclose(got.numpy(), want, atol=1e-5)
    assert gates[0].shape[-1] == (5 if per_channel_gates else 1)


def test_gated_fully_fusion_duplex_gating_extremes(rng):
    """A closed gate at level l (G_l = 0) makes it receive everything; G_l = 1 doubles X_l."""
    levels = [rng.normal(size=(1, 4, 4, 2)).astype("float32") for _ in range(3)]
    layer = GatedFullyFusion(use_bias=True)
    layer(levels)
    for conv, bias in zip(layer.gate_convs, (-50.0, 50.0, 50.0), strict=True):
        conv.kernel.assign(np.zeros(conv.kernel.shape, "float32"))
        conv.bias.assign(np.full(conv.bias.shape, bias, "float32"))
    fused, gates = layer(levels)
    np.testing.assert_allclose(fused[0].numpy(), levels[0] + levels[1] + levels[2], atol=1e-5)
    np.testing.assert_allclose(fused[1].numpy(), 2 * levels[1], atol=1e-5)


def test_gated_fully_fusion_unknown_size_and_roundtrip(tmp_path, rng):
    inputs = [keras.Input((None, None, 4)) for _ in range(3)]
    fused, gates = GatedFullyFusion(per_channel_gates=True, sequential=True)(inputs)
    model = keras.Model(inputs, {"fused": fused, "gates": gates})
    x = [rng.normal(size=(1, 16 // 2**i, 10 // 2**i, 4)).astype("float32") for i in range(3)]
    out = model(x)
    assert [tuple(f.shape) for f in out["fused"]] == [tuple(a.shape) for a in x]
    assert all(0 <= float(tf.reduce_min(g)) and float(tf.reduce_max(g)) <= 1 for g in out["gates"])
    keras_file_roundtrip(model, x, tmp_path)


def test_gated_fully_fusion_gates_have_no_bias_by_default_as_eq5():
    """G_l = sigmoid(w_l * X_l), w_l in R^{1x1xC}: C weights per level, no bias."""
    layer = GatedFullyFusion()
    layer.build([(None, 8, 8, 6), (None, 4, 4, 6), (None, 2, 2, 6)])
    assert [conv.count_params() for conv in layer.gate_convs] == [6, 6, 6]
    released = GatedFullyFusion(use_bias=True)
    released.build([(None, 8, 8, 6), (None, 4, 4, 6)])
    assert [conv.count_params() for conv in released.gate_convs] == [7, 7]
    # A config saved before the flag existed describes biased gates.
    config = GatedFullyFusion().get_config()
    del config["use_bias"]
    assert GatedFullyFusion.from_config(config).use_bias is True
    with pytest.raises(ValueError, match="`use_bias` must be a bool, received 1"):
        GatedFullyFusion(use_bias=1)


def test_gated_fully_fusion_rejects_bad_inputs():
    with pytest.raises(ValueError, match="`sequential` must be a bool, received 'yes'"):
        GatedFullyFusion(sequential="yes")
    with pytest.raises(ValueError, match="one channel count"):
        GatedFullyFusion()([keras.Input((8, 8, 4)), keras.Input((4, 4, 6))])
    with pytest.raises(ValueError, match="at least 2"):
        GatedFullyFusion()([keras.Input((8, 8, 4))])


def dfp_numpy(inputs, fusions):
    """Eq. 6: y_i = H_i([y_0, X~_1..X~_{i-1}]), i = 1..L+1, concatenated at the finest size."""
    pyramid = []
    for i, unit in enumerate(fusions, start=1):
        members = inputs[:i]
        h, w = members[-1].shape[1:3]
        stacked = np.concatenate([ref.resize_bilinear(m, h, w) for m in members], -1)
        pyramid.append(ref.conv_bn_relu(stacked, unit))
    h, w = pyramid[-1].shape[1:3]
    return np.concatenate([ref.resize_bilinear(y, h, w) for y in pyramid], -1)


@pytest.mark.parametrize("kernel_size", [1, 3])
def test_dense_feature_pyramid_matches_eq6(kernel_size, rng):
    shapes = [(6, 5, 7), (6, 5, 4), (6, 5, 4), (12, 10, 4)]
    inputs = [rng.normal(size=(2, *s)).astype("float32") for s in shapes]
    layer = DenseFeaturePyramid(filters=3, kernel_size=kernel_size)
    layer(inputs)
    ref.randomize_weights(layer, rng)
    assert len(layer.fusions) == 4
    np.testing.assert_allclose(
        layer(inputs, training=False).numpy(), dfp_numpy(inputs, layer.fusions), atol=1e-5
    )


def test_dense_feature_pyramid_shapes_and_roundtrip(tmp_path, rng):
    inputs = [keras.Input((None, None, c)) for c in (8, 4, 4)]
    dfp = DenseFeaturePyramid(filters=5)
    model = keras.Model(inputs, dfp(inputs))
    assert model.output_shape == (None, None, None, 15)
    # H_i is one 1x1 conv by default, as in `gffnet` (a "single convolution layer").
    assert [f.conv.kernel.shape[:2] for f in dfp.fusions] == [(1, 1)] * 3
    x = [rng.normal(size=(1, h, h, c)).astype("float32") for h, c in ((4, 8), (4, 4), (8, 4))]
    assert model(x).shape == (1, 8, 8, 15)
    keras_file_roundtrip(model, x, tmp_path)


def test_dense_feature_pyramid_rejects_bad_arguments():
    with pytest.raises(ValueError, match="`filters`.*received 0"):
        DenseFeaturePyramid(filters=0)
    with pytest.raises(ValueError, match="`kernel_size`"):
        DenseFeaturePyramid(kernel_size=2.5)
