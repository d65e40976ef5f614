"""DUpsampling layer, adaptive temperature and the PCA fit of label patches."""

import keras
import numpy as np
import pytest
import tensorflow as tf
from helpers.layer_test import config_clone

from keras_fusionseg.layers.dupsampling import (
    AdaptiveTemperatureSoftmax,
    DUpsampling,
    fit_to_reference,
)
from keras_fusionseg.layers.dupsampling_pca import (
    DUpsamplingBasis,
    fit_dupsampling,
    label_patches,
    load_dupsampling_basis,
    reconstruct_labels,
)


def blob_labels(rng, count, size=(24, 20), num_classes=3):
    """Piecewise-constant label maps (rectangles) with a few void pixels."""
    labels = []
    for _ in range(count):
        label = np.zeros(size, np.uint8)
        for _ in range(3):
            y, x = rng.integers(0, size[0]), rng.integers(0, size[1])
            label[y : y + rng.integers(3, 12), x : x + rng.integers(3, 12)] = rng.integers(
                1, num_classes
            )
        label[rng.integers(0, size[0]), rng.integers(0, size[1])] = 255
        labels.append(label[..., None])
    return labels


def test_dupsampling_equals_numpy_matmul_and_rearrangement(rng):
    r, num_classes, code = 4, 3, 5
    n = r * r * num_classes
    w = rng.normal(size=(n, code)).astype("float32")
    mean = rng.normal(size=(n,)).astype("float32")
    x = rng.normal(size=(2, 3, 2, code)).astype("float32")
    layer = DUpsampling(r, num_classes, code, reconstruction=w, mean=mean)
    y = np.asarray(layer(x))
    patches = x @ w.T + mean  # (2, 3, 2, N), N ordered [row a][column b][class c]
    expected = np.zeros((2, 3 * r, 2 * r, num_classes), "float32")
    for i in range(3):
        for j in range(2):
            for a in range(r):
                for b in range(r):
                    start = (a * r + b) * num_classes
                    expected[:, i * r + a, j * r + b] = patches[
                        :, i, j, start : start + num_classes
                    ]
    np.testing.assert_allclose(y, expected, atol=1e-5)
    assert not layer.trainable_weights  # W stays fixed by default
    np.testing.assert_allclose(config_clone(layer, x)(x), y, atol=1e-6)
    # with a reference the output is cropped bottom/right
    cropped = layer([x, np.zeros((2, 10, 7, 1), "float32")])
    np.testing.assert_allclose(cropped, expected[:, :10, :7], atol=1e-5)


def test_dupsampling_default_init_and_errors():
    layer = DUpsampling(2, 3, 4)
    layer.build((None, None, None, 4))
    w = layer.reconstruction.numpy()
    np.testing.assert_allclose(w.T @ w, np.eye(4), atol=1e-5)  # orthonormal columns
    np.testing.assert_allclose(layer.mean.numpy(), 1 / 3)
    with pytest.raises(ValueError, match="`ratio`"):
        DUpsampling(0, 3, 4)
    with pytest.raises(ValueError, match="reconstruction"):
        DUpsampling(2, 3, 4, reconstruction=np.zeros((5, 4)))
    with pytest.raises(ValueError, match="4 input channels"):
        DUpsampling(2, 3, 4)(np.zeros((1, 2, 2, 5), "float32"))


@pytest.mark.parametrize("trainable", [False, True])
def test_dupsampling_trainable_reconstruction_on_a_built_layer(trainable, rng):
    # Checked after build, when W and the mean exist: an unbuilt layer has no weights at all.
    layer = DUpsampling(2, 3, 4, trainable_reconstruction=trainable)
    x = tf.constant(rng.normal(size=(1, 2, 2, 4)).astype("float32"))
    layer(x)
    names = sorted(w.path.rsplit("/", 1)[-1] for w in layer.weights)
    assert names == ["mean", "reconstruction"]
    trained = sorted(w.path.rsplit("/", 1)[-1] for w in layer.trainable_weights)
    assert trained == (["mean", "reconstruction"] if trainable else [])
    assert len(layer.non_trainable_weights) == (0 if trainable else 2)
    clone = DUpsampling.from_config(layer.get_config())
    clone(x)
    assert len(clone.trainable_weights) == len(layer.trainable_weights)
    if trainable:  # the loss reaches W and the mean
        with tf.GradientTape() as tape:
            loss = tf.reduce_sum(layer(x) ** 2)
        gradients = tape.gradient(loss, layer.trainable_weights)
        assert all(float(tf.reduce_max(tf.abs(g))) > 0 for g in gradients)


def test_dupsampling_works_with_unknown_size():
    layer = DUpsampling(4, 2, 3)
    fn = tf.function(
        lambda x, ref: layer([x, ref]),
        input_signature=[
            tf.TensorSpec([None, None, None, 3]),
            tf.TensorSpec([None, None, None, 1]),
        ],
    )
    y = fn(tf.zeros((1, 3, 2, 3)), tf.zeros((1, 11, 8, 1)))
    assert tuple(y.shape) == (1, 11, 8, 2)


def test_adaptive_temperature_softmax_is_eq6(rng):
    z = rng.normal(size=(2, 3, 3, 4)).astype("float32")
    layer = AdaptiveTemperatureSoftmax(apply_softmax=True)
    layer.build(z.shape)
    assert float(layer.temperature.numpy()) == 1.0
    layer.temperature.assign(0.5)
    e = np.exp(z / 0.5 - (z / 0.5).max(-1, keepdims=True))
    np.testing.assert_allclose(layer(z), e / e.sum(-1, keepdims=True), atol=1e-5)
    logits = AdaptiveTemperatureSoftmax()
    logits.build(z.shape)
    logits.temperature.assign(2.0)
    np.testing.assert_allclose(logits(z), z / 2.0, atol=1e-6)
    assert len(logits.trainable_weights) == 1
    clone = config_clone(logits, z)
    np.testing.assert_allclose(clone(z), z / 2.0, atol=1e-6)
    with pytest.raises(ValueError, match="initial_temperature"):
        AdaptiveTemperatureSoftmax(initial_temperature=0)


def test_temperature_is_learnt(rng):
    z = rng.normal(size=(4, 8)).astype("float32") * 0.1
    y = z.argmax(-1)
    inputs = keras.Input((8,))
    model = keras.Model(inputs, AdaptiveTemperatureSoftmax()(inputs))
    model.compile(keras.optimizers.SGD(0.5), keras.losses.SparseCategoricalCrossentropy(True))
    model.fit(z, y, epochs=3, verbose=0)
    # the scores are right but soft: the loss wants them sharper, so T falls below 1
    assert float(model.layers[-1].temperature.numpy()) < 1.0


def test_label_patches_order_and_padding():
    label = np.array([[0, 1, 2], [1, 255, 0]], np.uint8)
    v = label_patches(label, 2, 3)
    assert v.shape == (2, 12)  # width 3 is padded to 4 -> two 2x2 patches
    # first patch pixels (0,0)=0, (0,1)=1, (1,0)=1, (1,1)=void
    np.testing.assert_array_equal(v[0].reshape(2, 2, 3)[..., :].argmax(-1), [[0, 1], [1, 0]])
    assert v[0].reshape(2, 2, 3)[1, 1].sum() == 0  # void -> zero vector
    assert v[1].reshape(2, 2, 3)[:, 1].sum() == 0  # padding column -> zero vectors
    assert label_patches(label, 2, 3, ignore_mode="skip_patch").shape == (0, 12)
    with pytest.raises(ValueError, match="record 'x.png'"):
        label_patches(np.array([[0, 7]]), 2, 3, record="x.png")


def test_pca_error_falls_with_channels_and_is_exact_at_full_rank(rng):
    labels = blob_labels(rng, 12)
    r, c = 4, 3
    n = r * r * c
    v = np.concatenate([label_patches(label, r, c) for label in labels])
    errors = []
    for channels in (2, 8, 16, 32, n):
        basis = fit_dupsampling(labels, c, r, channels)
        assert basis.reconstruction.shape == (n, channels)
        errors.append(float(np.mean((basis.decode(basis.encode(v)) - v) ** 2)))
    assert all(a > b for a, b in zip(errors[:-2], errors[1:-1], strict=True)), errors
    assert errors[-1] < 1e-10
    np.testing.assert_allclose(basis.mean, v.mean(0), atol=1e-6)
    full = fit_dupsampling(labels, c, r, n)
    for label in labels:
        truth = label[..., 0].astype(int)
        recon = reconstruct_labels(label, full)
        np.testing.assert_array_equal(recon[truth != 255], truth[truth != 255])


def test_randomized_pca_matches_exact(rng):
    labels = blob_labels(rng, 10, size=(32, 32))
    exact = fit_dupsampling(labels, 3, 8, 6, method="exact")
    randomized = fit_dupsampling(labels, 3, 8, 6, method="randomized", power_iterations=3)
    np.testing.assert_allclose(
        randomized.explained_variance, exact.explained_variance, rtol=1e-3, atol=1e-6
    )
    # same subspace: projections agree
    np.testing.assert_allclose(
        randomized.reconstruction @ randomized.projection,
        exact.reconstruction @ exact.projection,
        atol=1e-3,
    )
    np.testing.assert_allclose(randomized.total_variance, exact.total_variance, rtol=1e-6)


def test_fit_streams_tf_data_and_saves(rng, tmp_path):
    labels = blob_labels(rng, 6)
    ds = tf.data.Dataset.from_tensor_slices({"label": np.stack(labels)}).batch(4)
    basis = fit_dupsampling(ds, 3, 4, 5)
    same = fit_dupsampling(labels, 3, 4, 5)
    np.testing.assert_allclose(basis.explained_variance, same.explained_variance, rtol=1e-5)
    path = tmp_path / "w.npz"
    basis.save(path)
    loaded = load_dupsampling_basis(path)
    assert isinstance(loaded, DUpsamplingBasis) and loaded.ratio == 4
    np.testing.assert_array_equal(loaded.reconstruction, basis.reconstruction)
    with pytest.raises(ValueError, match="re-iterable"):
        fit_dupsampling(iter(labels), 3, 4, 5)
    with pytest.raises(ValueError, match="`channels`"):
        fit_dupsampling(labels, 3, 4, 49)
    with pytest.raises(ValueError, match="not a DUpsampling basis"):
        load_dupsampling_basis(tmp_path / "missing.npz")


@pytest.mark.parametrize("size", [(5, 7), (3, 4), (7, 3), (4, 7)])
def test_fit_to_reference_crops_or_repeats_the_last_row_and_column(size):
    x = np.arange(2 * 4 * 5 * 3, dtype=np.float32).reshape(2, 4, 5, 3)
    reference = np.zeros((2, *size, 1), np.float32)
    rows = np.minimum(np.arange(size[0]), 3)  # NumPy reference: edge extension of the crop
    cols = np.minimum(np.arange(size[1]), 4)
    expected = x[:, rows][:, :, cols]
    np.testing.assert_array_equal(fit_to_reference(x, reference).numpy(), expected)
