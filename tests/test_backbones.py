"""Backbones: pyramid shapes and strides at every output stride, dilation, counts, errors."""

import keras
import numpy as np
import pytest

from keras_fusionseg.backbones import build_backbone, list_backbones
from keras_fusionseg.backbones.output_stride import AtrousSchedule

TINY_RESNET = dict(depths=(1, 1, 1, 1), stage_widths=(8, 16, 32, 64), stem_width=16)


def trainable_count(model):
    return sum(int(np.prod(w.shape)) for w in model.trainable_weights)


def check_pyramid(model, features, height, width, output_stride, round_up=True):
    assert set(features) == set(model.pyramid_outputs) == set(model.pyramid_channels)
    assert model.output_stride == output_stride
    for key, value in features.items():
        stride = min(2 ** int(key[1]), output_stride)
        size = [-(-n // stride) if round_up else n // stride for n in (height, width)]
        expected = (1, *size, model.pyramid_channels[key])
        assert tuple(value.shape) == expected, key


def test_atrous_schedule_follows_the_reference_rule():
    schedule = AtrousSchedule(16)
    got = [schedule.next(s) for s in (2, 2, 2, 2, 1, 2, 1)]
    assert got == [(2, 1), (2, 1), (2, 1), (2, 1), (1, 1), (1, 1), (1, 2)]


def test_all_backbones_registered():
    assert {"resnet50", "resnet101", "resnet152", "mobilenetv2", "xception65", "xception71"} <= set(
        list_backbones()
    )


@pytest.mark.parametrize("output_stride", [8, 16, 32])
@pytest.mark.parametrize("deep_stem", [False, True])
def test_resnet_pyramid_strides(output_stride, deep_stem, rng):
    model = build_backbone(
        "resnet50", output_stride=output_stride, deep_stem=deep_stem, **TINY_RESNET
    )
    image = rng.uniform(0, 255, size=(1, 64, 96, 3)).astype("float32")
    check_pyramid(model, model(image), 64, 96, output_stride)
    stem_out = 32 if deep_stem else 16
    assert model.pyramid_channels == {"P1": stem_out, "P2": 32, "P3": 64, "P4": 128, "P5": 256}


def test_resnet_dilation_rates_at_os8():
    model = build_backbone(
        "resnet50", output_stride=8, depths=(1, 1, 2, 2), stage_widths=(8, 8, 8, 8), stem_width=8
    )
    for name, expected_rate, expected_stride in [
        ("conv3_block1_1_conv", 1, 2),
        ("conv4_block1_1_conv", 1, 1),
        ("conv4_block1_2_conv", 1, 1),
        ("conv4_block2_2_conv", 2, 1),
        ("conv5_block1_1_conv", 1, 1),
        ("conv5_block1_2_conv", 2, 1),
        ("conv5_block2_2_conv", 4, 1),
    ]:
        layer = model.get_layer(name)
        assert (layer.dilation_rate[0], layer.strides[0]) == (expected_rate, expected_stride), name


@pytest.mark.parametrize("output_stride,rates", [(16, (2, 4, 8)), (32, (1, 2, 4))])
def test_resnet_multi_grid(output_stride, rates):
    model = build_backbone(
        "resnet50",
        output_stride=output_stride,
        depths=(1, 1, 1, 3),
        stage_widths=(8, 8, 8, 8),
        stem_width=8,
        multi_grid=(1, 2, 4),
    )
    got = tuple(model.get_layer(f"conv5_block{i}_2_conv").dilation_rate[0] for i in (1, 2, 3))
    assert got == rates


def test_resnet_unknown_size_and_grayscale(rng):
    model = build_backbone(
        "resnet50", input_shape=(None, None, 1), normalization="tf", **TINY_RESNET
    )
    for height, width in [(65, 50), (32, 32)]:
        image = rng.uniform(0, 255, size=(1, height, width, 1)).astype("float32")
        check_pyramid(model, model(image), height, width, 32)


def test_resnet_exfuse_rearrangement_builds():
    model = build_backbone(
        "resnet101", depths=(8, 8, 9, 8), stage_widths=(8, 8, 16, 16), stem_width=8
    )
    assert model.get_layer("conv5_block8_3_conv").filters == 64


@pytest.mark.slow
def test_resnet_parameter_counts_match_references():
    # Keras Applications ResNet50(include_top=False): 23,587,712 parameters.
    assert build_backbone("resnet50").count_params() == 23_587_712
    # FastFCN reference deep-stem ResNets (no conv biases): 23.63M / 42.62M.
    assert trainable_count(build_backbone("resnet50", deep_stem=True, use_bias=False)) == (
        23_631_808
    )
    assert trainable_count(build_backbone("resnet101", deep_stem=True, use_bias=False)) == (
        42_623_936
    )


@pytest.mark.parametrize("output_stride", [8, 16, 32])
def test_mobilenetv2_pyramid_strides_and_dilation(output_stride, rng):
    model = build_backbone("mobilenetv2", output_stride=output_stride, alpha=0.35)
    image = rng.uniform(0, 255, size=(1, 64, 96, 3)).astype("float32")
    check_pyramid(model, model(image), 64, 96, output_stride)
    assert model.pyramid_channels == {"P1": 8, "P2": 8, "P3": 16, "P4": 32, "P5": 112}
    rates = [model.get_layer(f"block_{i}_depthwise").dilation_rate[0] for i in range(1, 17)]
    strides = [model.get_layer(f"block_{i}_depthwise").strides[0] for i in (6, 13)]
    expected = {
        8: ([1] * 6 + [2] * 7 + [4] * 3, [1, 1]),
        16: ([1] * 13 + [2] * 3, [2, 1]),
        32: ([1] * 16, [2, 2]),
    }
    assert (rates, strides) == expected[output_stride]


@pytest.mark.parametrize("strided_padding", ["keras", "symmetric"])
def test_mobilenetv2_unknown_odd_size_and_grayscale(strided_padding, rng):
    model = build_backbone(
        "mobilenetv2",
        input_shape=(None, None, 1),
        alpha=0.35,
        output_stride=16,
        strided_padding=strided_padding,
    )
    image = rng.uniform(0, 255, size=(1, 65, 50, 1)).astype("float32")
    check_pyramid(model, model(image), 65, 50, 16, round_up=strided_padding == "symmetric")


def test_mobilenetv2_full_count():
    # Keras Applications MobileNetV2(include_top=False) has 2,257,984 parameters, of which
    # the 1x1 conv to 1280 (not part of this backbone) has 409,600 + 4 * 1,280.
    assert build_backbone("mobilenetv2").count_params() == 2_257_984 - 414_720


@pytest.mark.parametrize(
    "kwargs,match",
    [
        (dict(name="resnet51"), "Unknown backbone 'resnet51'"),
        (dict(name="resnet50", output_stride=4), "`output_stride`"),
        (dict(name="resnet50", depths=(1, 1, 1)), "`depths`"),
        (dict(name="resnet50", stage_widths=(8, 0, 8, 8)), "`stage_widths`"),
        (dict(name="resnet50", multi_grid=(1, 2)), "`multi_grid`"),
        (dict(name="resnet50", input_shape=(None, None, 1)), "normalization='caffe'"),
        (dict(name="resnet50", normalization="bgr"), "`normalization`"),
        (dict(name="resnet50", input_shape=(64, 64)), "`input_shape`"),
        (dict(name="mobilenetv2", alpha=0.6), "`alpha` must be one of"),
        (dict(name="mobilenetv2", weight_decay=-1.0), "`weight_decay`"),
        (dict(name="mobilenetv2", strided_padding="same"), "`strided_padding`"),
    ],
)
def test_backbone_argument_errors(kwargs, match):
    with pytest.raises(ValueError, match=match):
        build_backbone(kwargs.pop("name"), **kwargs)


@pytest.mark.parametrize(
    "name,options",
    [
        ("resnet50", TINY_RESNET),
        ("xception65", dict(width_multiplier=0.05, middle_flow_units=1)),
    ],
)
def test_backbone_keras_round_trip(name, options, tmp_path, rng):
    model = build_backbone(name, output_stride=8, **options)
    path = tmp_path / "backbone.keras"
    model.save(path)
    restored = keras.models.load_model(path)
    image = rng.uniform(0, 255, size=(1, 48, 40, 3)).astype("float32")
    expected, got = model(image), restored(image)
    for key in expected:
        np.testing.assert_allclose(got[key], expected[key], atol=1e-5)
