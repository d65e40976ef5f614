"""FastFCN blocks: JointPyramidUpsampling (Fig. 4) and ContextEncoding (EncNet Sec. 3)."""

import gff_fastfcn_numpy as ref
import keras
import numpy as np
import pytest
from helpers.layer_test import keras_file_roundtrip

from keras_fusionseg.layers.fastfcn import ContextEncoding, JointPyramidUpsampling


def count_without_moving_statistics(layer):
    return sum(
        int(np.prod(w.shape))
        for w in layer.weights
        if "moving_mean" not in w.path and "moving_variance" not in w.path
    )


def jpu_numpy(inputs, layer):
    embedded = [
        ref.conv_bn_relu(x, unit) for x, unit in zip(inputs, layer.input_convs, strict=True)
    ]
    h, w = embedded[0].shape[1:3]
    joined = np.concatenate([ref.resize_bilinear(y, h, w) for y in embedded], -1)
    branches = []
    for rate, sep in zip(layer.dilation_rates, layer.dilated_convs, strict=True):
        y = ref.depthwise_conv2d(joined, sep.depthwise.kernel.numpy(), rate)
        y = ref.batch_norm(y, sep.depthwise_bn)
        y = ref.conv2d(y, sep.pointwise.kernel.numpy())
        branches.append(ref.relu(ref.batch_norm(y, sep.pointwise_bn)))
    return np.concatenate(branches, -1)


def test_jpu_matches_numpy(rng):
    inputs = [
        rng.normal(size=(2, 16, 12, 6)).astype("float32"),
        rng.normal(size=(2, 8, 6, 10)).astype("float32"),
        rng.normal(size=(2, 4, 3, 12)).astype("float32"),
    ]
    layer = JointPyramidUpsampling(width=4)
    layer(inputs)
    ref.randomize_weights(layer, rng)
    got = layer(inputs, training=False).numpy()
    assert got.shape == (2, 16, 12, 16)
    np.testing.assert_allclose(got, jpu_numpy(inputs, layer), atol=1e-5)


def test_jpu_parameter_count_of_the_reference():
    layer = JointPyramidUpsampling(width=512)
    layer.build([(None, None, None, 512), (None, None, None, 1024), (None, None, None, 2048)])
    assert count_without_moving_statistics(layer) == 19_735_552
    assert layer.count_params() == 19_755_008


def test_jpu_unknown_size_and_roundtrip(tmp_path, rng):
    inputs = [keras.Input((None, None, c)) for c in (4, 8, 8)]
    model = keras.Model(inputs, JointPyramidUpsampling(width=3, dilation_rates=(1, 2))(inputs))
    assert model.output_shape == (None, None, None, 6)
    for h, w in [(16, 16), (12, 20), (9, 7)]:
        x = [
            rng.normal(size=(1, h, w, 4)).astype("float32"),
            rng.normal(size=(1, (h + 1) // 2, (w + 1) // 2, 8)).astype("float32"),
            rng.normal(size=(1, (h + 3) // 4, (w + 3) // 4, 8)).astype("float32"),
        ]
        assert model(x).shape == (1, h, w, 6)
    keras_file_roundtrip(model, x, tmp_path)


def test_jpu_rejects_bad_arguments():
    with pytest.raises(ValueError, match="`width`.*received 0"):
        JointPyramidUpsampling(width=0)
    with pytest.raises(ValueError, match="`dilation_rates`.*received \\(1, 0\\)"):
        JointPyramidUpsampling(dilation_rates=(1, 0))
    with pytest.raises(ValueError, match="finest first"):
        JointPyramidUpsampling()(keras.Input((8, 8, 4)))


def context_encoding_numpy(x, layer):
    """EncNet: a_ik = softmax_k(s_k ||x_i - d_k||^2), e_k = sum_i a_ik (x_i - d_k), ...

    The 1x1 conv feeds only the encoding; the attention scales the module's input `x`.
    """
    projected = ref.conv_bn_relu(x, layer.projection)
    b, h, w, c = projected.shape
    codes, s = layer.codewords.numpy(), layer.smoothing_factors.numpy()
    vectors = projected.reshape(b, h * w, c)
    residuals = vectors[:, :, None, :] - codes[None, None]  # (B, N, K, C)
    logits = s * np.sum(residuals**2, axis=-1)
    logits -= logits.max(axis=-1, keepdims=True)
    assignment = np.exp(logits) / np.exp(logits).sum(axis=-1, keepdims=True)
    encoded = np.sum(assignment[..., None] * residuals, axis=1)  # (B, K, C)
    encoded = ref.relu(ref.batch_norm(encoded, layer.encoding_bn, axis=1)).mean(axis=1)
    gamma = ref.sigmoid(encoded @ layer.attention.kernel.numpy() + layer.attention.bias.numpy())
    features = ref.relu(x + x * gamma[:, None, None, :])
    presence = encoded @ layer.presence.kernel.numpy() + layer.presence.bias.numpy()
    return features, presence


def test_context_encoding_matches_numpy(rng):
    x = rng.normal(size=(2, 5, 6, 8)).astype("float32")
    layer = ContextEncoding(num_codes=4, num_classes=3)
    layer(x)
    ref.randomize_weights(layer, rng)
    features, presence = layer(x, training=False)
    want_features, want_presence = context_encoding_numpy(x, layer)
    np.testing.assert_allclose(features.numpy(), want_features, atol=1e-5)
    np.testing.assert_allclose(presence.numpy(), want_presence, atol=1e-5)


def test_context_encoding_attention_passes_negative_inputs_of_the_module(rng):
    """relu(x + x * gamma) with gamma in (0, 1) keeps the sign of the *input*: a negative
    input stays zero and a positive one grows, whatever the projection does."""
    x = rng.normal(size=(1, 4, 4, 6)).astype("float32")
    layer = ContextEncoding(num_codes=3)
    layer(x)
    ref.randomize_weights(layer, rng)
    got = layer(x, training=False).numpy()
    assert np.all(got[x <= 0] == 0)
    positive = x > 0
    assert np.all(got[positive] >= x[positive]) and np.all(got[positive] <= 2 * x[positive])


def test_context_encoding_shapes_unknown_size_and_roundtrip(tmp_path, rng):
    inputs = keras.Input((None, None, 8))
    features, presence = ContextEncoding(num_codes=4, num_classes=5)(inputs)
    model = keras.Model(inputs, {"features": features, "presence": presence})
    for size in [(6, 6), (3, 9)]:
        out = model(rng.normal(size=(2, *size, 8)).astype("float32"))
        assert out["features"].shape == (2, *size, 8)
        assert out["presence"].shape == (2, 5)
    keras_file_roundtrip(model, rng.normal(size=(2, 7, 4, 8)).astype("float32"), tmp_path)
    plain = ContextEncoding(num_codes=2)
    assert plain(np.zeros((1, 4, 4, 8), "float32")).shape == (1, 4, 4, 8)


def test_context_encoding_rejects_bad_arguments():
    with pytest.raises(ValueError, match="`num_codes`.*received 0"):
        ContextEncoding(num_codes=0)
    with pytest.raises(ValueError, match="`num_classes`.*received 'x'"):
        ContextEncoding(num_classes="x")
