"""The `dunet` model: fitted W inside, any input size, `.keras` round trip, training with T."""

import keras
import numpy as np
import pytest

from keras_fusionseg import models
from keras_fusionseg.layers.dupsampling_pca import fit_dupsampling
from keras_fusionseg.training.losses import losses_from_loss_spec

NUM_CLASSES = 3


def predict(model, x):
    """Eager inference: no XLA compile of the whole graph (slow on CPU for a two-call test)."""
    outputs = model(x, training=False)
    if isinstance(outputs, dict):
        return {key: np.asarray(value) for key, value in outputs.items()}
    return np.asarray(outputs)


def tiny(**overrides):
    return {**models.get_model_spec("dunet").tiny, **overrides}


def random_labels(rng, count, size=(64, 64)):
    labels = np.zeros((count, *size, 1), np.uint8)
    for label in labels:
        y, x = rng.integers(0, size[0] - 16, 2)
        label[y : y + 24, x : x + 30] = rng.integers(1, NUM_CLASSES)
    return labels


@pytest.fixture(scope="module")
def basis():
    # tiny dunet runs at the registry default output stride 16 -> ratio 16, N = 768
    labels = random_labels(np.random.default_rng(1), 4)
    return fit_dupsampling(list(labels), NUM_CLASSES, 16, 16)


def test_dunet_carries_the_fitted_basis_and_roundtrips(basis, rng, tmp_path):
    path = tmp_path / "basis.npz"
    basis.save(path)
    model = models.build("dunet", num_classes=NUM_CLASSES, **tiny(dupsampling_basis=str(path)))
    layer = model.get_layer("dupsampling")
    np.testing.assert_array_equal(layer.reconstruction.numpy(), basis.reconstruction)
    np.testing.assert_array_equal(layer.mean.numpy(), basis.mean)
    assert layer.ratio == 16 and layer.code_channels == 16
    assert not any("dupsampling" in w.path for w in model.trainable_weights)
    x = rng.uniform(0, 255, size=(1, 70, 50, 3)).astype("float32")  # not a multiple of 16
    y = predict(model, x)
    assert y.shape == (1, 70, 50, NUM_CLASSES)
    model.save(tmp_path / "dunet.keras")
    clone = keras.models.load_model(tmp_path / "dunet.keras")
    np.testing.assert_array_equal(
        clone.get_layer("dupsampling").reconstruction.numpy(), basis.reconstruction
    )
    np.testing.assert_allclose(predict(clone, x), y, atol=1e-5)


def test_dunet_logits_are_dupsampled_code_over_temperature(basis, rng):
    model = models.build("dunet", num_classes=NUM_CLASSES, **tiny(dupsampling_basis=basis))
    model.get_layer("temperature").temperature.assign(0.5)
    x = rng.uniform(0, 255, size=(1, 64, 64, 3)).astype("float32")
    code = predict(keras.Model(model.inputs, model.get_layer("code_conv").output), x)
    patches = code @ basis.reconstruction.T + basis.mean  # (1, 4, 4, 16*16*3)
    expected = patches.reshape(1, 4, 4, 16, 16, 3).transpose(0, 1, 3, 2, 4, 5)
    expected = expected.reshape(1, 64, 64, 3) / 0.5
    np.testing.assert_allclose(predict(model, x), expected, rtol=1e-4, atol=1e-4)


def test_dunet_trains_with_temperature(basis, rng):
    model = models.build("dunet", num_classes=NUM_CLASSES, **tiny(dupsampling_basis=basis))
    loss, weights = losses_from_loss_spec(model.loss_spec, num_classes=NUM_CLASSES)
    # Eager steps: tracing the training graph costs more CPU than two tiny steps.
    model.compile(
        keras.optimizers.SGD(0.01, momentum=0.9), loss=loss, loss_weights=weights, run_eagerly=True
    )
    x = rng.uniform(0, 255, size=(2, 64, 64, 3)).astype("float32")
    y = random_labels(rng, 2)
    history = model.fit(x, y, batch_size=2, epochs=2, verbose=0)
    assert np.all(np.isfinite(history.history["loss"]))
    assert float(model.get_layer("temperature").temperature.numpy()) != 1.0
    w = model.get_layer("dupsampling").reconstruction.numpy()
    np.testing.assert_array_equal(w, basis.reconstruction)  # W stays fixed


def test_dunet_options_and_errors(basis, rng):
    model = models.build(
        "dunet", num_classes=NUM_CLASSES, **tiny(fused_features=(), decoder_convs=0)
    )
    assert model.get_layer("dupsampling").code_channels == 16
    assert model.output_shape == (None, None, None, NUM_CLASSES)
    with pytest.raises(ValueError, match="fitted with ratio 16"):
        models.build(
            "dunet", num_classes=NUM_CLASSES, output_stride=32, **tiny(dupsampling_basis=basis)
        )
    with pytest.raises(ValueError, match="rows"):
        models.build("dunet", num_classes=4, **tiny(dupsampling_basis=basis))
    with pytest.raises(ValueError, match="'P7'"):
        models.build("dunet", num_classes=NUM_CLASSES, **tiny(fused_features=("P7",)))
    with pytest.raises(ValueError, match="dupsampling_basis"):
        models.build("dunet", num_classes=NUM_CLASSES, **tiny(dupsampling_basis=3))


def test_dunet_defaults_to_the_deep_stem_so_p1_is_conv1_3():
    """The paper's ResNet-50 is modified as in DeepLabv3+: "P1" is the third stem conv."""
    model = models.build("dunet", num_classes=NUM_CLASSES, **tiny())
    stem_width = tiny()["backbone_options"]["stem_width"]
    # Deep stem: stem_width, stem_width, 2 * stem_width channels; the 7x7 stem gives stem_width.
    assert model.get_layer("reduce_P1").input.shape[-1] == 2 * stem_width
    plain = models.build(
        "dunet",
        num_classes=NUM_CLASSES,
        **tiny(backbone_options={**tiny()["backbone_options"], "deep_stem": False}),
    )
    assert plain.get_layer("reduce_P1").input.shape[-1] == stem_width


def test_dunet_light_decoder_reduces_each_input_before_the_fusion():
    light = models.build("dunet", num_classes=NUM_CLASSES, **tiny(low_level_channels=5))
    assert light.get_layer("aggregate").output.shape[-1] == 16 + 5 + 5
    assert [layer.name for layer in light.layers if layer.name.startswith("decoder_conv")] == [
        "decoder_conv1"
    ]
    heavy = models.build("dunet", num_classes=NUM_CLASSES, **tiny(decoder="concat"))
    pyramid = heavy.get_layer("aggregate").input
    assert heavy.get_layer("aggregate").output.shape[-1] == sum(t.shape[-1] for t in pyramid)
    assert "reduce_P5" not in {layer.name for layer in heavy.layers}
    assert heavy.get_layer("decoder_conv2") is not None
    with pytest.raises(ValueError, match="`decoder` must be one of"):
        models.build("dunet", num_classes=NUM_CLASSES, **tiny(decoder="heavy"))
    with pytest.raises(ValueError, match="`low_level_channels`.*received 0"):
        models.build("dunet", num_classes=NUM_CLASSES, **tiny(low_level_channels=0))


@pytest.mark.slow
def test_dunet_full_size_decoder_macs_are_the_light_layout():
    """ResNet-50 deep stem, OS16, conv1_3 + b3u6c3: the decoder MACs per stride-16 position
    are exactly the 1x1 reductions, one 3x3 fuse, the code conv and DUpsampling's W."""
    from keras_fusionseg import backbones
    from keras_fusionseg.utils import count_macs

    size, classes, ratio = 128, 21, 16
    model = models.build("dunet", num_classes=classes, input_shape=(size, size, 3))
    backbone = backbones.build_backbone(
        "resnet50", input_shape=(size, size, 3), output_stride=ratio, deep_stem=True
    )
    per_position = (
        2048 * 256  # last features 1x1 -> 256
        + 128 * 48  # conv1_3 1x1 -> 48
        + 1024 * 48  # b3u6c3 1x1 -> 48
        + 9 * (256 + 48 + 48) * 256  # one 3x3 fuse
        + 256 * 64  # code conv to C~ = 64
        + 64 * ratio * ratio * classes  # DUpsampling's W
    )
    positions = (size // ratio) ** 2
    decoder = count_macs(model, (size, size)) - count_macs(backbone, (size, size))
    assert decoder == positions * per_position


def test_mobilenetv2_halving_odd_sizes_down_still_gives_the_input_size():
    """88 -> 44 -> 22 -> 11 -> 5 at stride 16: DUpsampling's 16 x 5 = 80 columns are fitted
    to the 88 of the image, the last 8 repeating column 79 (not a smaller logit map)."""
    model = models.build(
        "dunet",
        num_classes=3,
        backbone="mobilenetv2",
        backbone_options={"alpha": 0.35},
        output_stride=16,
        decoder_channels=16,
    )
    image = np.random.default_rng(0).uniform(0, 255, (1, 67, 88, 3)).astype(np.float32)
    logits = predict(model, image)
    assert logits.shape == (1, 67, 88, 3)
    np.testing.assert_array_equal(logits[:, :, 80:], np.repeat(logits[:, :, 79:80], 8, axis=2))
    np.testing.assert_array_equal(logits[:, 64:], np.repeat(logits[:, 63:64], 3, axis=1))
