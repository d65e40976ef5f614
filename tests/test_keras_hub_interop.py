"""keras-hub interop with the real package: keras-hub backbones (ResNet, MiT) drive every head of
ours through `from_keras_hub`, and our backbones drive keras-hub's DeepLabV3ImageSegmenter.

Backbones are small random-init configs (no preset downloads). Tests that need keras-hub skip
when it is not installed; the adapter's level mapping is also tested without it.
"""

import keras
import numpy as np
import pytest

from keras_fusionseg import backbones, models
from keras_fusionseg.backbones.keras_hub import from_keras_hub

NUM_CLASSES = 3
HEIGHT, WIDTH = 64, 96
MIT_SIZE = (64, 64)

# Small options per registered backbone of ours (a newly registered one must be added here).
OUR_TINY_BACKBONES = {
    "mobilenetv2": {"alpha": 0.35},
    "resnet50": {"depths": (1, 1, 1, 1), "stage_widths": (8, 16, 32, 64), "stem_width": 16},
    "resnet101": {"depths": (1, 1, 1, 1), "stage_widths": (8, 16, 32, 64), "stem_width": 16},
    "resnet152": {"depths": (1, 1, 1, 1), "stage_widths": (8, 16, 32, 64), "stem_width": 16},
    "xception65": {"width_multiplier": 0.05, "middle_flow_units": 2},
    "xception71": {"width_multiplier": 0.05, "middle_flow_units": 2},
}


@pytest.fixture
def keras_hub():
    return pytest.importorskip(
        "keras_hub",
        reason="keras-hub is not installed (optional: `pip install --no-deps keras-hub` plus "
        "its non-TensorFlow requirements, see README)",
    )


def hub_resnet(keras_hub):
    """keras-hub ResNet v1 (basic blocks), any input size; pyramid "P2".."P5"."""
    return keras_hub.models.ResNetBackbone(
        input_conv_filters=[64],  # a basic-block stack 0 has no projection: must match its 64
        input_conv_kernel_sizes=[3],
        stackwise_num_filters=[64, 16, 16, 32],  # keras-hub requires 64 first
        stackwise_num_blocks=[1, 1, 1, 1],
        stackwise_num_strides=[1, 2, 2, 2],
        block_type="basic_block",
    )


def hub_mit(keras_hub):
    """keras-hub MiT (SegFormer encoder): pyramid "P1".."P4" at strides 4..32. It needs a
    fixed, square input size (its attention takes the side of a map as sqrt(tokens))."""
    return keras_hub.models.MiTBackbone(
        layerwise_depths=[1, 1, 1, 1],
        num_layers=4,
        layerwise_num_heads=[1, 1, 1, 1],
        layerwise_sr_ratios=[8, 4, 2, 1],
        max_drop_path_rate=0.0,
        layerwise_patch_sizes=[7, 3, 3, 3],
        layerwise_strides=[4, 2, 2, 2],
        hidden_dims=[8, 16, 16, 32],
        image_shape=(*MIT_SIZE, 3),
    )


# keras-hub backbone -> (factory, input size of the tests).
HUB_BACKBONES = {"resnet": (hub_resnet, (HEIGHT, WIDTH)), "mit": (hub_mit, MIT_SIZE)}


def image(rng, height=HEIGHT, width=WIDTH):
    return rng.uniform(0, 255, size=(1, height, width, 3)).astype("float32")


# keras-hub backbones start their pyramid at stride 4: DUpsampling fuses "P2" instead of its
# default stride-2 "P1".
ON_KERAS_HUB = {"dunet": {"fused_features": ("P2", "P4")}}


def head_options(name):
    """The model's tiny options without its own backbone."""
    tiny = models.get_model_spec(name).tiny
    options = {k: v for k, v in tiny.items() if k not in ("backbone", "backbone_options")}
    return {**options, **ON_KERAS_HUB.get(name, {})}


# --- The adapter ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "hub, renamed",
    [
        ("resnet", {"P2": "P2", "P3": "P3", "P4": "P4", "P5": "P5"}),
        ("mit", {"P1": "P2", "P2": "P3", "P3": "P4", "P4": "P5"}),
    ],
)
def test_adapter_keys_levels_by_stride_and_normalises_raw_pixels(keras_hub, hub, renamed, rng):
    factory, (height, width) = HUB_BACKBONES[hub]
    encoder = factory(keras_hub)
    backbone = from_keras_hub(encoder, normalization="tf")
    assert backbone.output_stride == 32
    assert set(backbone.pyramid_outputs) == set(renamed.values())
    x = image(rng, height, width)
    ours = backbone(x)
    theirs = keras.Model(encoder.inputs[0], encoder.pyramid_outputs)(x / 127.5 - 1.0)
    for their_key, our_key in renamed.items():
        stride = 2 ** int(our_key[1])
        assert ours[our_key].shape[1:3] == (height // stride, width // stride), our_key
        assert backbone.pyramid_channels[our_key] == ours[our_key].shape[-1]
        np.testing.assert_allclose(ours[our_key], theirs[their_key], atol=1e-5, err_msg=our_key)
    # Weights are shared with the keras-hub model, not copied.
    assert {id(w) for w in encoder.weights} <= {id(w) for w in backbone.weights}


def pyramid_stub(strides, channels=4):
    """A functional model whose `pyramid_outputs` has keys "L0".. at the given strides."""
    inputs = keras.Input((None, None, 3))
    pyramid, x, current = {}, inputs, 1
    for index, stride in enumerate(strides):
        step = stride // current
        x = keras.layers.Conv2D(channels, 3, strides=step, padding="same")(x)
        current = stride
        pyramid[f"L{index}"] = x
    model = keras.Model(inputs, pyramid)
    model.pyramid_outputs = pyramid
    return model


@pytest.mark.parametrize(
    "strides, keys, output_stride",
    [
        ((4, 8, 16, 32), ["P2", "P3", "P4", "P5"], 32),
        ((2, 4, 8, 16, 32, 64), ["P1", "P2", "P3", "P4", "P5"], 32),  # stride 64 left out
        ((4, 8, 16, 16), ["P2", "P3", "P4", "P5"], 16),  # dilated tail, as our OS16 backbones
        ((4, 8, 8, 8), ["P2", "P3", "P4", "P5"], 8),
    ],
)
def test_adapter_level_keys_without_keras_hub(strides, keys, output_stride, rng):
    backbone = from_keras_hub(pyramid_stub(strides), normalization="none")
    assert sorted(backbone.pyramid_outputs) == keys
    assert backbone.output_stride == output_stride
    features = backbone(image(rng))
    for key in keys:
        stride = min(2 ** int(key[1]), output_stride)
        assert features[key].shape[1:3] == (HEIGHT // stride, WIDTH // stride), key


def test_adapter_errors_name_the_problem():
    with pytest.raises(ValueError, match="no `pyramid_outputs`"):
        from_keras_hub(
            keras.Sequential([keras.Input((8, 8, 3)), keras.layers.Conv2D(2, 1)]),
            normalization="none",
        )
    with pytest.raises(ValueError, match="only the deepest stride may repeat"):
        from_keras_hub(pyramid_stub((4, 4, 8, 16)), normalization="none")
    with pytest.raises(ValueError, match="`normalization` must be one of"):
        from_keras_hub(pyramid_stub((4, 8)), normalization="imagenet")


# --- keras-hub backbones under every head of ours ---------------------------------------------


@pytest.mark.parametrize("hub", sorted(HUB_BACKBONES))
@pytest.mark.parametrize("name", models.list_models())
def test_every_head_runs_on_a_keras_hub_backbone(keras_hub, name, hub, rng):
    factory, size = HUB_BACKBONES[hub]
    backbone = from_keras_hub(factory(keras_hub), normalization="torch")
    model = models.build(name, num_classes=NUM_CLASSES, backbone=backbone, **head_options(name))
    y = model(image(rng, *size), training=False)
    assert y.shape == (1, *size, NUM_CLASSES), (name, hub)
    assert np.all(np.isfinite(y))


@pytest.mark.parametrize("hub", sorted(HUB_BACKBONES))
def test_model_on_a_keras_hub_backbone_roundtrips_keras_file(keras_hub, hub, tmp_path, rng):
    factory, size = HUB_BACKBONES[hub]
    backbone = from_keras_hub(factory(keras_hub), normalization="torch")
    model = models.build(
        "deeplabv3plus", num_classes=NUM_CLASSES, backbone=backbone, **head_options("deeplabv3plus")
    )
    x = image(rng, *size)
    y = model(x, training=False)
    path = tmp_path / f"deeplabv3plus_{hub}.keras"
    model.save(path)
    clone = keras.models.load_model(path)
    np.testing.assert_allclose(clone(x, training=False), y, atol=1e-5)


# --- Our backbones inside keras-hub's DeepLabV3ImageSegmenter ---------------------------------


def test_every_backbone_of_ours_has_tiny_options_here():
    # The package's own backbones: other test files register test-only ones at collection.
    ours = [
        name
        for name in backbones.list_backbones()
        if backbones.registry.get_backbone_spec(name).builder.__module__.startswith(
            "keras_fusionseg."
        )
    ]
    assert sorted(OUR_TINY_BACKBONES) == ours


def keras_hub_deeplabv3(keras_hub, ours):
    # keras-hub's head upsamples by 2**(digit of the key) / upsampling_size, so it assumes
    # "P5" at stride 32: our backbones must be built at output stride 32.
    deeplab = keras_hub.models.DeepLabV3Backbone(
        image_encoder=ours,
        low_level_feature_key="P2",
        spatial_pyramid_pooling_key="P5",
        upsampling_size=8,
        dilation_rates=[6, 12, 18],
    )
    return keras_hub.models.DeepLabV3ImageSegmenter(backbone=deeplab, num_classes=NUM_CLASSES)


@pytest.mark.parametrize("name", sorted(OUR_TINY_BACKBONES))
def test_our_backbone_drives_keras_hub_deeplabv3(keras_hub, name, rng):
    ours = backbones.build_backbone(name, output_stride=32, **OUR_TINY_BACKBONES[name])
    segmenter = keras_hub_deeplabv3(keras_hub, ours)
    y = segmenter(image(rng), training=False)  # raw pixels: our backbone normalises them
    assert y.shape == (1, HEIGHT, WIDTH, NUM_CLASSES), name
    assert np.all(np.isfinite(y))
    assert {id(w) for w in ours.weights} <= {id(w) for w in segmenter.weights}


def test_keras_hub_deeplabv3_on_our_backbone_roundtrips_keras_file(keras_hub, tmp_path, rng):
    ours = backbones.build_backbone("resnet50", output_stride=32, **OUR_TINY_BACKBONES["resnet50"])
    segmenter = keras_hub_deeplabv3(keras_hub, ours)
    x = image(rng)
    y = segmenter(x, training=False)
    segmenter.save(tmp_path / "segmenter.keras")
    clone = keras.models.load_model(tmp_path / "segmenter.keras")
    np.testing.assert_allclose(clone(x, training=False), y, atol=1e-5)
    # Our backbones keep their pyramid attributes through the file (backbones.checks).
    loaded = clone.backbone.image_encoder
    assert sorted(loaded.pyramid_outputs) == sorted(ours.pyramid_outputs)
    assert loaded.output_stride == 32
