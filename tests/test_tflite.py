"""TFLite conversions (fp32, fp16, dynamic int8, full int8; fixed and dynamic shapes) on LiteRT."""

import numpy as np
import pytest
from export_helpers import tiny_segmenter

from keras_fusionseg.export import TFLiteSegmenter, convert_to_tflite, representative_images

# Max abs logit difference from Keras allowed per conversion, as a fraction of the logits'
# range on the test image (the tiny model's logits span only ~0.6, so absolute tolerances
# of 0.05-0.15 would be a quarter of the range and let a broken quantization through).
# Measured: fp16 2e-4, dynamic int8 < 1e-6 (its small tensors stay float), full int8 1.2e-2.
TOLERANCE = {"fp32": 2e-4, "fp16": 2e-3, "dynamic_int8": 1e-2, "full_int8": 4e-2}


@pytest.fixture(scope="module")
def model_and_images():
    model = tiny_segmenter(num_classes=3)
    rng = np.random.default_rng(1)
    images = [rng.integers(0, 256, (64, 64, 3), dtype=np.uint8) for _ in range(8)]
    return model, images


@pytest.mark.parametrize(
    "quantization, input_size",
    [
        ("fp32", None),
        ("fp32", (64, 64)),
        ("fp16", None),
        ("dynamic_int8", None),
        ("full_int8", None),
        ("full_int8", (64, 64)),
    ],
)
def test_conversion_matches_keras(model_and_images, quantization, input_size):
    model, images = model_and_images
    flatbuffer = convert_to_tflite(
        model, quantization=quantization, input_size=input_size, representative_images=images
    )
    runner = TFLiteSegmenter(flatbuffer)
    assert runner.model.dynamic == (input_size is None)
    assert runner.model.input_dtype == (np.uint8 if quantization == "full_int8" else np.float32)
    image = images[0]
    expected = model(image[None].astype("float32"), training=False).numpy()[0]
    logits = runner.logits(image).numpy()  # (64, 64, 3): the image's own size
    spread = float(np.ptp(expected))
    assert spread > 0.1  # a near-constant model would make any tolerance vacuous
    np.testing.assert_allclose(logits, expected, atol=TOLERANCE[quantization] * spread)
    assert np.mean(logits.argmax(-1) == expected.argmax(-1)) >= 0.97
    # Any image size: as it is (dynamic) or resized (fixed), class ids at the image's size.
    odd = images[1][:50, :37]
    assert runner.class_ids(odd).shape == (50, 37)


def test_dynamic_runner_sizes_like_the_saved_model(model_and_images):
    model, images = model_and_images
    flatbuffer = convert_to_tflite(model)
    odd = images[2][:40, :52]
    # default: the image as it is (the SavedModel's "whole" policy, what evaluate.py scores)
    expected = model(odd[None].astype("float32"), training=False).numpy()[0]
    np.testing.assert_allclose(TFLiteSegmenter(flatbuffer).logits(odd), expected, atol=1e-4)
    # the "pad" policy: mean-pixel padding at the bottom/right to a multiple of 32, cropped back
    padded = np.pad(odd.astype("float32"), [(0, 24), (0, 12), (0, 0)], constant_values=127.5)
    expected = model(padded[None], training=False).numpy()[0, :40, :52]
    runner = TFLiteSegmenter(flatbuffer, size_policy="pad")
    np.testing.assert_allclose(runner.logits(odd), expected, atol=1e-4)


def test_bad_arguments(model_and_images, tmp_path):
    model, _ = model_and_images
    with pytest.raises(ValueError, match="quantization"):
        convert_to_tflite(model, quantization="int4")
    with pytest.raises(ValueError, match="representative_images"):
        convert_to_tflite(model, quantization="full_int8")
    with pytest.raises(ValueError, match="input_size"):
        convert_to_tflite(model, input_size=(64,))
    with pytest.raises(ValueError, match="does not exist"):
        TFLiteSegmenter(tmp_path / "missing.tflite")
    bad = tmp_path / "bad.tflite"
    bad.write_bytes(b"not a flatbuffer")
    with pytest.raises(ValueError, match="bad.tflite"):
        TFLiteSegmenter(bad)
    runner = TFLiteSegmenter(convert_to_tflite(model))
    with pytest.raises(ValueError, match="3-channel"):
        runner.class_ids(np.zeros((8, 8, 1), np.uint8))


def test_benchmark_helpers(model_and_images):
    from keras_fusionseg.export.benchmark import (
        compare_on_split,
        int8_error_by_layer,
        median_latency_ms,
    )

    model, images = model_and_images
    runner = TFLiteSegmenter(convert_to_tflite(model))
    label = np.random.default_rng(2).integers(0, 3, (40, 50))
    label[:5] = 255
    examples = [(image[:40, :50], label) for image in images[:2]]
    scores = compare_on_split(model, {"fp32": runner}, examples, 3)
    assert scores["fp32"]["max_abs_diff"] < 1e-4 and scores["fp32"]["agreement"] > 0.99
    assert abs(scores["fp32"]["mean_iou"] - scores["keras"]["mean_iou"]) < 0.01
    median, p10 = median_latency_ms(lambda: runner.logits(images[0]), warmup=1, runs=3)
    assert 0 < p10 <= median
    worst = int8_error_by_layer(model, [i.astype("float32") for i in images[:2]], None, top=3)
    assert len(worst) == 3 and worst[0][2] >= worst[-1][2]


def test_representative_images_are_the_split_padded_or_resized(tmp_path):
    # Three 10x12 images of a folder dataset: a column ramp 10 * x plus 50 * (image index).
    from PIL import Image

    ramp = np.broadcast_to(10 * np.arange(12), (10, 12))
    for index in range(3):
        for kind in ("images", "labels"):
            (tmp_path / kind / "train").mkdir(parents=True, exist_ok=True)
        image = np.repeat((ramp + 50 * index)[..., None], 3, axis=-1).astype(np.uint8)
        Image.fromarray(image).save(tmp_path / "images" / "train" / f"{index}.png")
        Image.fromarray(np.zeros((10, 12), np.uint8)).save(
            tmp_path / "labels" / "train" / f"{index}.png"
        )
    (tmp_path / "classes.txt").write_text("a\nb\n")
    source = str(tmp_path)

    padded = representative_images(source, num_images=2, size_divisor=8)
    assert len(padded) == 2
    for index, image in enumerate(padded):
        assert image.shape == (1, 16, 16, 3) and image.dtype == np.float32
        np.testing.assert_array_equal(image[0, :10, :12, 0], ramp + 50 * index)
        assert (image[0, 10:] == 128).all() and (image[0, :, 12:] == 128).all()  # 127.5 rounded
    # Resized for a fixed-size model: halving a linear ramp samples it at 2j + 0.5.
    resized = representative_images(source, num_images=3, input_size=(5, 6))
    assert [image.shape for image in resized] == [(1, 5, 6, 3)] * 3
    expected = 10 * (2 * np.arange(6) + 0.5) + 50 * 2
    np.testing.assert_array_equal(resized[2][0, :, :, 1], np.broadcast_to(expected, (5, 6)))
    with pytest.raises(ValueError, match="No calibration images in split 'train'"):
        representative_images(source, num_images=0)
