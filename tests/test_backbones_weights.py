"""Pretrained-weight loading: Keras Applications files (legacy .h5 and Keras 3 .weights.h5)."""

import h5py
import keras
import numpy as np
import pytest
from keras.src.legacy.saving import legacy_h5_format

from keras_fusionseg.backbones import build_backbone
from keras_fusionseg.backbones.weights import load_backbone_weights

TINY_RESNET = dict(depths=(1, 1, 1, 1), stage_widths=(8, 16, 32, 64), stem_width=16)


def randomize_weights(model, rng):
    """Every variable (kernels, biases, BN statistics, nested layers' too) set at random.

    Walks `model.weights`, which reaches the variables of layers nested in composite layers
    (`ConvBNReLU`, `SeparableConvBN`), so a loader that skips any of them leaves a difference.
    """
    for variable in model.weights:
        name = variable.path.rsplit("/", 1)[-1]
        before = variable.numpy()
        if name in ("gamma", "moving_variance"):
            value = rng.uniform(0.5, 2.0, variable.shape)
        elif name in ("beta", "moving_mean"):
            value = rng.normal(0, 0.1, variable.shape)
        else:  # kernels and biases: perturbed at their own scale, so deep nets stay finite
            value = before + rng.normal(0, 0.1 * before.std() + 0.01, variable.shape)
        variable.assign(value.astype(variable.dtype))
        assert not np.array_equal(before, variable.numpy()), variable.path


def save_both_formats(model, tmp_path):
    """The Keras 3 `.weights.h5` file and a legacy `.h5` (the Keras Applications layout)."""
    keras3 = tmp_path / "reference.weights.h5"
    legacy = tmp_path / "reference_legacy.h5"
    model.save_weights(keras3)
    with h5py.File(legacy, "w") as file:
        legacy_h5_format.save_weights_to_hdf5_group(file, model)
    return keras3, legacy


def check_identical_features(reference, endpoints, ours, preprocess, tmp_path, rng):
    randomize_weights(reference, rng)
    features = keras.Model(
        reference.input, {key: reference.get_layer(name).output for key, name in endpoints.items()}
    )
    image = rng.uniform(0, 255, size=(1, 64, 64, 3)).astype("float32")
    expected = features(preprocess(image.copy()))
    for path in save_both_formats(reference, tmp_path):
        ours.set_weights([np.zeros(w.shape, w.dtype) for w in ours.weights])
        report = load_backbone_weights(ours, str(path))
        assert not (report["missing"] or report["mismatched"] or report["extra"])
        got = ours(image)
        for key in endpoints:
            scale = float(np.max(np.abs(expected[key])))
            np.testing.assert_allclose(got[key], expected[key], rtol=1e-4, atol=1e-4 * scale)


@pytest.mark.slow
def test_resnet50_loads_keras_applications_weights(tmp_path, rng):
    reference = keras.applications.ResNet50(
        weights=None, include_top=False, input_shape=(None, None, 3)
    )
    endpoints = {"P1": "conv1_relu", "P2": "conv2_block3_out", "P5": "conv5_block3_out"}
    ours = build_backbone("resnet50", output_stride=32)
    check_identical_features(
        reference, endpoints, ours, keras.applications.resnet.preprocess_input, tmp_path, rng
    )


def test_mobilenetv2_loads_keras_applications_weights(tmp_path, rng):
    reference = keras.applications.MobileNetV2(
        weights=None, include_top=False, input_shape=(None, None, 3), alpha=0.35
    )
    endpoints = {
        "P2": "block_2_add",
        "P3": "block_5_add",
        "P4": "block_12_add",
        "P5": "block_16_project_BN",
    }
    ours = build_backbone("mobilenetv2", output_stride=32, alpha=0.35)
    check_identical_features(
        reference, endpoints, ours, keras.applications.mobilenet_v2.preprocess_input, tmp_path, rng
    )


def test_dilated_backbone_loads_the_same_file(tmp_path):
    # Dilation changes no weight shape: an OS8 backbone takes the OS32 weights.
    source = build_backbone("resnet50", output_stride=32, **TINY_RESNET)
    path = tmp_path / "tiny.weights.h5"
    source.save_weights(path)
    target = build_backbone("resnet50", output_stride=8, weights=str(path), **TINY_RESNET)
    for a, b in zip(source.weights, target.weights, strict=True):
        np.testing.assert_array_equal(a.numpy(), b.numpy())


def test_composite_layers_load_by_sub_layer(tmp_path):
    options = dict(width_multiplier=0.05, middle_flow_units=1)
    source = build_backbone("xception65", **options)
    randomize_weights(source, np.random.default_rng(1))
    for suffix in ("weights.h5", "h5"):
        path = tmp_path / f"xception.{suffix}"
        if suffix == "h5":
            with h5py.File(path, "w") as file:
                legacy_h5_format.save_weights_to_hdf5_group(file, source)
        else:
            source.save_weights(path)
        target = build_backbone("xception65", weights=str(path), **options)
        for a, b in zip(source.weights, target.weights, strict=True):
            np.testing.assert_array_equal(a.numpy(), b.numpy())


def test_mismatching_file_gives_a_clear_error(tmp_path):
    path = tmp_path / "tiny.weights.h5"
    build_backbone("resnet50", **TINY_RESNET).save_weights(path)
    deeper = dict(TINY_RESNET, depths=(1, 1, 2, 1))
    with pytest.raises(ValueError, match=r"tiny\.weights\.h5.*\n.*missing.*conv4_block2_1_conv"):
        build_backbone("resnet50", weights=str(path), **deeper)
    wider = dict(TINY_RESNET, stage_widths=(8, 16, 32, 32))
    with pytest.raises(ValueError, match=r"mis-shaped.*conv5_block1_1_conv"):
        build_backbone("resnet50", weights=str(path), **wider)
    shallower = dict(TINY_RESNET, deep_stem=True)
    with pytest.raises(ValueError, match=r"extra in the file.*conv1_conv"):
        build_backbone("resnet50", weights=str(path), **shallower)
    # Non-strict loading assigns what fits and reports the rest.
    model = build_backbone("resnet50", **deeper)
    report = load_backbone_weights(model, str(path), strict=False)
    assert report["loaded"] > 0 and "conv4_block2_1_conv" in report["missing"]


def test_bad_file_errors(tmp_path):
    with pytest.raises(ValueError, match="does not exist"):
        build_backbone("resnet50", weights=str(tmp_path / "absent.h5"), **TINY_RESNET)
    not_hdf5 = tmp_path / "notes.h5"
    not_hdf5.write_text("not weights")
    with pytest.raises(ValueError, match="notes.h5.*not HDF5"):
        build_backbone("resnet50", weights=str(not_hdf5), **TINY_RESNET)
    empty = tmp_path / "empty.h5"
    h5py.File(empty, "w").close()
    with pytest.raises(ValueError, match="empty.h5.*neither"):
        build_backbone("resnet50", weights=str(empty), **TINY_RESNET)
