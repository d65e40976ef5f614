"""Trimap band sources: label boundaries, or dilated void annotations (DeepLabv3+ Sec. 4.4)."""

import keras
import numpy as np
import pytest

from keras_fusionseg.evaluation import boundary, evaluator
from keras_fusionseg.training import config as config_lib


def scene():
    """Class 1 on the left half, class 2 on the right (one boundary), a 2x2 void blob in
    the left half, away from the class boundary."""
    label = np.ones((12, 12), np.int64)
    label[:, 6:] = 2
    label[2:4, 1:3] = 255
    return label


def test_void_band_dilates_only_the_void_pixels():
    label = scene()
    band = boundary.trimap_band(label, 1, band_source="void")
    expected = np.zeros((12, 12), bool)
    expected[1:5, 0:4] = True  # the 2x2 blob grown by 1 in every direction
    np.testing.assert_array_equal(band, expected)
    # The default source marks the class boundary (and the void outline) instead.
    default = boundary.trimap_band(label, 1)
    assert default[:, 4:8].all() and default[8:, 6].all()
    assert not band[:, 5:].any()


def test_void_band_confusion_counts_the_labelled_pixels_near_void():
    label = scene()
    prediction = np.ones_like(label)  # right for class 1, wrong for class 2
    void = boundary.band_confusions(label, prediction, [1], 3, band_source="void")[1]
    # 16 band pixels minus the 4 void ones, all class 1, all predicted 1.
    assert void[1, 1] == 12 and void.sum() == 12
    edges = boundary.band_confusions(label, prediction, [1], 3)[1]
    assert edges[2, 1] > 0  # the class boundary is in the default band
    with pytest.raises(ValueError, match="`band_source` must be one of"):
        boundary.band_confusions(label, prediction, [1], 3, band_source="edges")


def test_evaluate_reports_the_band_source():
    label = scene()
    logits = np.zeros((12, 12, 3), np.float32)
    logits[..., 1] = 1.0  # predicts class 1 everywhere
    inputs = keras.Input((None, None, 3))
    model = keras.Model(inputs, keras.layers.Lambda(lambda x: x * 0 + logits)(inputs))
    data = [(np.zeros((12, 12, 3), np.float32), label[..., None].astype(np.uint8))]
    results = evaluator.evaluate(
        model, data, num_classes=3, trimap_widths=(1,), trimap_band="void", verbose=0
    )
    assert results["trimap_band"] == "void"
    assert results["trimap"]["1"]["pixel_accuracy"] == 1.0  # only class-1 pixels near void
    with pytest.raises(ValueError, match="`trimap_band` must be one of"):
        evaluator.evaluate(model, data, num_classes=3, trimap_widths=(1,), trimap_band="x")


def test_config_checks_the_trimap_band():
    bad = config_lib.default_config()
    assert bad.eval.trimap_band == "boundaries"
    bad.eval.trimap_band = "voids"
    with pytest.raises(ValueError, match="eval.trimap_band must be one of"):
        config_lib.validate_config(bad)
