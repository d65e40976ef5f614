"""`deeplabv3` and `deeplabv3plus`: any input size, `.keras` round trip, options and errors."""

import keras
import numpy as np
import pytest
import tensorflow as tf

from keras_fusionseg import backbones, models
from keras_fusionseg.layers.common import ImageNormalization

TINY_RESNET = {
    "backbone": "resnet50",
    "backbone_options": {"depths": (1, 1, 1, 1), "stage_widths": (8, 8, 8, 8), "stem_width": 8},
    "aspp_filters": 8,
    "decoder_filters": 8,
    "low_level_filters": 4,
}


def toy_backbone(output_stride=16, name="toy", with_attributes=True, input_shape=(None, None, 3)):
    """A hand-made backbone following the registry contract (strides 2..32 or dilated)."""
    inputs = keras.Input(input_shape)
    x = ImageNormalization("tf")(inputs)
    pyramid, stride, rate = {}, 1, 1
    for level, width in zip(range(1, 6), (4, 6, 8, 8, 12), strict=True):
        if stride < output_stride:
            x = keras.layers.Conv2D(width, 3, strides=2, padding="same")(x)
            stride *= 2
        else:
            rate *= 2
            x = keras.layers.Conv2D(width, 3, dilation_rate=rate, padding="same")(x)
        pyramid[f"P{level}"] = x
    model = keras.Model(inputs, pyramid, name=name)
    model.pyramid_outputs = pyramid
    if with_attributes:
        model.pyramid_channels = {k: int(v.shape[-1]) for k, v in pyramid.items()}
        model.output_stride = output_stride
    return model


def small(**kwargs):
    return {"aspp_filters": 8, "decoder_filters": 8, "low_level_filters": 4, **kwargs}


@pytest.mark.parametrize("name", ["deeplabv3", "deeplabv3plus"])
def test_any_input_size_and_keras_roundtrip(name, tmp_path, rng):
    options = small() if name == "deeplabv3plus" else {"aspp_filters": 8}
    model = models.build(name, num_classes=3, backbone=toy_backbone(), **options)
    for size in [(64, 64), (65, 47), (32, 96)]:
        x = rng.uniform(0, 255, size=(1, *size, 3)).astype("float32")
        y = model.predict(x, verbose=0)
        assert y.shape == (1, *size, 3)
    path = tmp_path / f"{name}.keras"
    model.save(path)
    clone = keras.models.load_model(path)
    np.testing.assert_allclose(clone.predict(x, verbose=0), y, atol=1e-5)
    assert model.loss_spec == {"logits": (models.SEGMENTATION, 1.0)}


def test_unknown_size_inside_tf_function(rng):
    model = models.build("deeplabv3plus", num_classes=2, backbone=toy_backbone(), **small())
    fn = tf.function(
        lambda x: model(x, training=False),
        input_signature=[tf.TensorSpec((None, None, None, 3), tf.float32)],
    )
    for size in [(48, 80), (70, 33)]:
        x = rng.uniform(0, 255, size=(1, *size, 3)).astype("float32")
        np.testing.assert_allclose(fn(x), model(x, training=False), atol=1e-5)


def test_decoder_uses_p2_and_aspp_uses_p5():
    backbone = toy_backbone()
    model = models.build("deeplabv3plus", num_classes=2, backbone=backbone, **small())
    aspp, decoder = model.get_layer("aspp"), model.get_layer("decoder")
    assert aspp.input is backbone.pyramid_outputs["P5"]
    assert decoder.input[1] is backbone.pyramid_outputs["P2"]
    assert decoder.low_level_projection.conv.kernel.shape == (1, 1, 6, 4)


def test_aux_outputs_is_a_logits_dict(rng):
    model = models.build(
        "deeplabv3plus", num_classes=2, backbone=toy_backbone(), aux_outputs=True, **small()
    )
    outputs = model(rng.uniform(0, 255, size=(1, 32, 32, 3)).astype("float32"))
    assert set(outputs) == {"logits"} and outputs["logits"].shape == (1, 32, 32, 2)


@pytest.mark.parametrize(
    "output_stride,rates", [(8, (12, 24, 36)), (16, (6, 12, 18)), (32, (3, 6, 9))]
)
def test_aspp_rates_follow_the_output_stride(output_stride, rates):
    backbone = toy_backbone(output_stride)
    model = models.build("deeplabv3", num_classes=2, backbone=backbone, aspp_filters=4)
    assert model.get_layer("aspp").atrous_rates == rates
    explicit = models.build(
        "deeplabv3",
        num_classes=2,
        backbone=toy_backbone(output_stride),
        aspp_filters=4,
        aspp_rates=(1, 2),
    )
    assert explicit.get_layer("aspp").atrous_rates == (1, 2)


def tap_offsets(branch, channels, size=41):
    """Row offsets from the centre where a branch responds to a point impulse.

    Measured on the built branch, so it shows the dilation the convolution really applies.
    Impulses of both signs: a ReLU cannot hide a tap whose weights are all of one sign.
    """
    centre = size // 2
    zeros = np.zeros((1, size, size, channels), "float32")
    base = branch(zeros, training=False).numpy()
    rows = set()
    for sign in (1.0, -1.0):
        impulse = zeros.copy()
        impulse[0, centre, centre, 0] = sign * 10.0
        diff = np.abs(branch(impulse, training=False).numpy() - base).sum(axis=(0, 2, 3))
        rows.update(int(r) - centre for r in np.flatnonzero(diff > 1e-6))
    return sorted(rows)


@pytest.mark.parametrize("separable", [False, True])
def test_aspp_branches_apply_the_rates_of_the_output_stride(separable):
    # Rates (6, 12, 18) at output stride 16: DeepLabv3 Sec. 3.3. Read from the built
    # convolutions' responses, not from the `atrous_rates` attribute.
    model = models.build(
        "deeplabv3",
        num_classes=2,
        backbone=toy_backbone(16),
        aspp_filters=4,
        separable=separable,
    )
    aspp = model.get_layer("aspp")
    assert len(aspp.atrous_convs) == 3
    for branch, rate in zip(aspp.atrous_convs, (6, 12, 18), strict=True):
        assert tap_offsets(branch, channels=12) == [-rate, 0, rate]


def test_output_stride_read_from_static_shapes_of_foreign_backbones():
    backbone = toy_backbone(8, with_attributes=False, input_shape=(64, 64, 3))
    model = models.build("deeplabv3", num_classes=2, backbone=backbone, aspp_filters=4)
    assert model.get_layer("aspp").atrous_rates == (12, 24, 36)
    with pytest.raises(ValueError, match="aspp_rates"):
        models.build("deeplabv3", num_classes=2, backbone=toy_backbone(8, with_attributes=False))


def test_separable_default_follows_the_backbone():
    plain = models.build("deeplabv3plus", num_classes=2, backbone=toy_backbone(), **small())
    assert not plain.get_layer("aspp").separable and not plain.get_layer("decoder").separable
    xception_like = models.build(
        "deeplabv3plus", num_classes=2, backbone=toy_backbone(name="xception65"), **small()
    )
    assert xception_like.get_layer("aspp").separable
    assert xception_like.get_layer("decoder").separable


def test_weight_decay_adds_head_losses(rng):
    model = models.build(
        "deeplabv3plus", num_classes=2, backbone=toy_backbone(), weight_decay=1e-4, **small()
    )
    model(rng.uniform(0, 255, size=(1, 32, 32, 3)).astype("float32"))
    # ASPP: pooling, 1x1, three atrous, projection; decoder: low-level, two 3x3, logits.
    assert len(model.losses) == 6 + 4


@pytest.mark.parametrize(
    "options,argument",
    [
        ({"aspp_filters": 0}, "filters"),
        ({"decoder_filters": 2.0}, "filters"),
        ({"low_level_filters": -4}, "low_level_filters"),
        ({"aspp_rates": (6, "12")}, "atrous_rates"),
        ({"dropout": 1.5}, "dropout"),
        ({"separable": "yes"}, "separable"),
        ({"weight_decay": -1.0}, "weight_decay"),
    ],
)
def test_bad_options(options, argument):
    with pytest.raises(ValueError, match=argument):
        models.build(
            "deeplabv3plus", num_classes=2, backbone=toy_backbone(), **{**small(), **options}
        )


def test_unknown_option_is_rejected():
    with pytest.raises(TypeError, match="decoder_filters"):
        models.build("deeplabv3", num_classes=2, backbone=toy_backbone(), decoder_filters=8)


def test_missing_low_level_features():
    backbone = toy_backbone()
    backbone.pyramid_outputs = {k: v for k, v in backbone.pyramid_outputs.items() if k != "P2"}
    with pytest.raises(ValueError, match="'P2'"):
        models.build("deeplabv3plus", num_classes=2, backbone=backbone, **small())


@pytest.mark.skipif("resnet50" not in backbones.list_backbones(), reason="ResNet not registered")
@pytest.mark.parametrize("output_stride", [8, 32])
def test_on_a_tiny_resnet_at_each_output_stride(output_stride, rng):
    model = models.build("deeplabv3plus", num_classes=3, output_stride=output_stride, **TINY_RESNET)
    assert model.get_layer("aspp").atrous_rates == {8: (12, 24, 36), 32: (3, 6, 9)}[output_stride]
    x = rng.uniform(0, 255, size=(1, 67, 64, 3)).astype("float32")
    assert model.predict(x, verbose=0).shape == (1, 67, 64, 3)
