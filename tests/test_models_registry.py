"""Every registered model: builds at any size, returns logits at input resolution, round-trips `.keras`."""

import warnings

import keras
import numpy as np
import pytest
from registered_models import REGISTERED

from keras_fusionseg import backbones, models

NUM_CLASSES = 3


def test_the_twelve_models_are_registered():
    assert sorted(models.list_models()) == list(REGISTERED)


def tiny_kwargs(name):
    return dict(models.get_model_spec(name).tiny)


@pytest.mark.parametrize("name", REGISTERED)
def test_model_builds_at_any_size_and_roundtrips(name, tmp_path, rng):
    model = models.build(name, num_classes=NUM_CLASSES, **tiny_kwargs(name))
    # Sizes that are not multiples of the output stride (odd, prime, non-square).
    for size in [(64, 64), (67, 45), (50, 83)]:
        x = rng.uniform(0, 255, size=(1, *size, 3)).astype("float32")
        y = np.asarray(model(x, training=False))
        assert y.shape == (1, *size, NUM_CLASSES), name
        assert y.dtype == np.float32
    path = tmp_path / f"{name}.keras"
    model.save(path)
    clone = keras.models.load_model(path)
    np.testing.assert_allclose(clone(x, training=False), y, atol=1e-5)


@pytest.mark.parametrize("name", REGISTERED)
def test_aux_outputs_are_a_dict_described_by_loss_spec(name, rng):
    model = models.build(name, num_classes=NUM_CLASSES, aux_outputs=True, **tiny_kwargs(name))
    outputs = model(rng.uniform(0, 255, size=(1, 64, 64, 3)).astype("float32"))
    assert isinstance(outputs, dict) and "logits" in outputs
    assert set(outputs) == set(model.loss_spec)
    assert model.loss_spec["logits"] == (models.SEGMENTATION, 1.0)
    for key, (kind, weight) in model.loss_spec.items():
        assert kind in (models.SEGMENTATION, models.PRESENCE), key
        assert weight > 0
        if kind == models.PRESENCE:
            assert outputs[key].shape == (1, NUM_CLASSES)
        else:
            assert outputs[key].shape[-1] == NUM_CLASSES


def test_build_rejects_bad_arguments():
    name = REGISTERED[0]
    with pytest.raises(ValueError, match="Unknown model 'nope'"):
        models.build("nope", num_classes=3)
    with pytest.raises(ValueError, match="num_classes"):
        models.build(name, num_classes=0)
    with pytest.raises(ValueError, match="output_stride"):
        models.build(name, num_classes=3, output_stride=4)
    with pytest.raises(ValueError, match="Unknown backbone 'resnet7'"):
        models.build(name, num_classes=3, backbone="resnet7")


def test_build_rejects_backbone_model_without_pyramid():
    plain = keras.Sequential([keras.Input((8, 8, 3)), keras.layers.Conv2D(2, 1)])
    with pytest.raises(ValueError, match="pyramid_outputs"):
        models.build(REGISTERED[0], num_classes=3, backbone=plain)


def test_backbone_registry_errors():
    with pytest.raises(ValueError, match="Unknown backbone"):
        backbones.build_backbone("nope")
    if backbones.list_backbones():
        with pytest.raises(ValueError, match="output_stride"):
            backbones.build_backbone(backbones.list_backbones()[0], output_stride=12)


def test_default_backbone_options_apply_only_to_the_default_backbone(monkeypatch):
    seen = []

    def fake_build_backbone(name, **kwargs):
        seen.append((name, kwargs))
        raise RuntimeError("stop")

    monkeypatch.setattr(models.registry, "build_backbone", fake_build_backbone)
    for kwargs in (
        {},
        {"backbone_options": {"deep_stem": False}},
        {"backbone": "resnet101"},
        {"backbone": "resnet50"},
        {"backbone": "resnet50", "backbone_options": {"use_bias": True}},
    ):
        with pytest.raises(RuntimeError, match="stop"):
            models.build("fastfcn_psp", num_classes=3, **kwargs)
    assert seen[0][0] == "resnet50" and seen[0][1]["deep_stem"] is True
    assert seen[0][1]["use_bias"] is False
    assert seen[1][1]["deep_stem"] is False and seen[1][1]["use_bias"] is False
    assert seen[2][0] == "resnet101" and "deep_stem" not in seen[2][1]
    # Naming the default backbone gives exactly the default network.
    assert seen[3] == seen[0]
    assert seen[4][1]["deep_stem"] is True and seen[4][1]["use_bias"] is True
    assert models.get_model_spec("exfuse").default_backbone_options["depths"] == (8, 8, 9, 8)


@pytest.mark.parametrize("name", ["fastfcn_psp", "exfuse"])
def test_naming_the_default_backbone_builds_the_default_model(name):
    spec = models.get_model_spec(name)
    options = {"input_shape": (64, 64, 3), "output_stride": 32}
    unnamed = models.build(name, num_classes=3, **options)
    named = models.build(name, num_classes=3, backbone=spec.default_backbone, **options)
    assert [w.shape for w in named.weights] == [w.shape for w in unnamed.weights]
    assert named.count_params() == unnamed.count_params()


def hand_made_backbone(channels=(8, 8, 16, 16, 32)):
    """A plain functional model following the keras-hub `pyramid_outputs` convention."""
    inputs = keras.Input((None, None, 3))
    x = keras.layers.Rescaling(1 / 127.5, offset=-1)(inputs)
    pyramid = {}
    for level, width in enumerate(channels, start=1):
        x = keras.layers.Conv2D(width, 3, strides=2, padding="same", activation="relu")(x)
        pyramid[f"P{level}"] = x
    model = keras.Model(inputs, pyramid)
    model.pyramid_outputs = pyramid
    model.output_stride = 32  # needed with unknown input sizes (ASPP rates, DUpsampling ratio)
    return model


@pytest.mark.parametrize("name", models.list_models())
def test_models_accept_a_foreign_backbone_with_pyramid_outputs(name, rng, tmp_path):
    options = {
        k: v for k, v in tiny_kwargs(name).items() if k not in ("backbone", "backbone_options")
    }
    backbone = hand_made_backbone()
    model = models.build(name, num_classes=NUM_CLASSES, backbone=backbone, **options)
    x = rng.uniform(0, 255, size=(1, 64, 96, 3)).astype("float32")
    y = model(x)
    assert y.shape == (1, 64, 96, NUM_CLASSES), name
    # It saves and loads like any model, and records which backbone object it was built on.
    assert model.build_arguments["backbone"] == {"name": backbone.name, "class": "Functional"}
    assert model.build_arguments["output_stride"] == 32
    model.save(tmp_path / f"{name}.keras")
    clone = keras.models.load_model(tmp_path / f"{name}.keras")
    assert clone.build_arguments == model.build_arguments
    np.testing.assert_allclose(clone(x), y, atol=1e-5)


def test_backbone_weights_misfit_from_default_options_warns_and_loads_what_fits(
    monkeypatch, tmp_path
):
    """ExFuse's layer rearrangement has no ImageNet weights: a file for the standard layout
    loads where it fits, with a warning naming the default options; other misfits raise."""
    widths = {"stage_widths": (8, 16, 32, 64), "stem_width": 16}
    standard = backbones.build_backbone("resnet50", depths=(1, 1, 1, 1), **widths)
    path = str(tmp_path / "standard.weights.h5")
    standard.save_weights(path)

    def builder(backbone, *, num_classes, aux_outputs=False):
        logits = keras.layers.Conv2D(num_classes, 1)(backbone.pyramid_outputs["P5"])
        return keras.Model(backbone.inputs, logits)

    spec = models.registry.ModelSpec(
        "rearranged", builder, "resnet50", 32, "", {}, {"depths": (2, 1, 1, 1)}
    )
    monkeypatch.setitem(models.registry._MODELS, "rearranged", spec)
    with pytest.warns(UserWarning, match="default options \\{'depths': \\(2, 1, 1, 1\\)\\}"):
        model = models.build(
            "rearranged", num_classes=2, backbone_weights=path, backbone_options=widths
        )
    stem = standard.get_layer("conv1_conv").kernel.numpy()
    np.testing.assert_array_equal(model.get_layer("conv1_conv").kernel.numpy(), stem)
    # Overriding the default builds the file's layout: strict load, no warning.
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        models.build(
            "rearranged",
            num_classes=2,
            backbone_weights=path,
            backbone_options={**widths, "depths": (1, 1, 1, 1)},
        )
    # A misfit the defaults do not explain still raises.
    with pytest.raises(ValueError, match="does not fit"):
        models.build(
            "rearranged",
            num_classes=2,
            backbone_weights=path,
            backbone_options={**widths, "depths": (1, 2, 1, 1)},
        )


def test_build_loads_whole_model_and_backbone_weights(tmp_path):
    # Random values everywhere (BN statistics and biases included): a loader that skips any
    # variable leaves the freshly built value, which differs.
    rng = np.random.default_rng(5)
    kwargs = tiny_kwargs("pspnet")
    source = models.build("pspnet", num_classes=NUM_CLASSES, **kwargs)
    for variable in source.weights:
        variable.assign(rng.uniform(0.5, 1.5, variable.shape).astype(variable.dtype))
    path = tmp_path / "pspnet.weights.h5"
    source.save_weights(path)
    loaded = models.build("pspnet", num_classes=NUM_CLASSES, weights=str(path), **kwargs)
    for a, b in zip(source.weights, loaded.weights, strict=True):
        np.testing.assert_array_equal(a.numpy(), b.numpy(), err_msg=a.path)

    backbone = backbones.build_backbone(kwargs["backbone"], **kwargs["backbone_options"])
    for variable in backbone.weights:
        variable.assign(rng.uniform(0.5, 1.5, variable.shape).astype(variable.dtype))
    backbone_path = tmp_path / "backbone.weights.h5"
    backbone.save_weights(backbone_path)
    model = models.build(
        "pspnet", num_classes=NUM_CLASSES, backbone_weights=str(backbone_path), **kwargs
    )
    by_path = {variable.path: variable.numpy() for variable in model.weights}
    for variable in backbone.weights:
        np.testing.assert_array_equal(by_path[variable.path], variable.numpy(), variable.path)
