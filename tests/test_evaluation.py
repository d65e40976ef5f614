"""Confusion-matrix metric, evaluation modes and trimap bands against hand-computed cases."""

import csv
import json

import keras
import numpy as np
import pytest
import tensorflow as tf

from keras_fusionseg.evaluation import boundary, confusion, evaluator, inference


def pixelwise_model(channels=2):
    """Logits = the input pixels themselves: each pixel is classified on its own."""
    inputs = keras.Input((None, None, channels))
    return keras.Model(inputs, keras.layers.Activation("linear", name="logits")(inputs))


def window_mean_model(channels=2):
    """Logits = input minus its mean over the whole input (depends on the window)."""
    inputs = keras.Input((None, None, channels))
    mean = keras.layers.GlobalAveragePooling2D(keepdims=True)(inputs)
    return keras.Model(inputs, keras.layers.Subtract()([inputs, mean]))


def column_ramp_model(channels=2):
    """Logits = input + (column index) * (0, 1, ...): not mirror-symmetric."""
    inputs = keras.Input((None, None, channels))

    def add_ramp(x):
        width = keras.ops.shape(x)[2]
        columns = keras.ops.cast(keras.ops.arange(width), x.dtype)[None, None, :, None]
        return x + columns * keras.ops.arange(channels, dtype=x.dtype)

    return keras.Model(inputs, keras.layers.Lambda(add_ramp)(inputs))


def multiscale(model, image, scales, flip):
    pipeline = inference.SegmentationPipeline(
        model, size_policy="multiscale", scales=scales, flip=flip
    )
    return pipeline.probabilities(image)


def sliding(model, image, crop_size, stride=None):
    pipeline = inference.SegmentationPipeline(
        model, size_policy="sliding", crop_size=crop_size, stride=stride
    )
    return pipeline.probabilities(image)


def softmax(x):
    e = np.exp(x - x.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


def test_iou_from_confusion_hand_case():
    # rows = true, columns = predicted
    matrix = np.array([[3, 1, 0], [2, 4, 0], [0, 0, 0]])
    scores = confusion.iou_from_confusion(matrix)
    np.testing.assert_allclose(scores["per_class_iou"][:2], [3 / 6, 4 / 7])
    assert np.isnan(scores["per_class_iou"][2])  # absent class: left out of the mean
    assert scores["mean_iou"] == pytest.approx((3 / 6 + 4 / 7) / 2)
    assert scores["pixel_accuracy"] == pytest.approx(7 / 10)


def test_metric_takes_logits_and_skips_ignore_label():
    labels = np.array([[[0, 1], [255, 2]]])
    logits = np.zeros((1, 2, 2, 3), "float32")
    logits[0, 0, 0, 0] = logits[0, 0, 1, 2] = logits[0, 1, 0, 1] = logits[0, 1, 1, 2] = 5.0
    miou = confusion.ConfusionMatrixMetric(3, ignore_label=255)
    accuracy = confusion.ConfusionMatrixMetric(3, result_kind="pixel_accuracy")
    for metric in (miou, accuracy):
        metric.update_state(labels[..., None], logits)
        metric.update_state(labels, logits)  # streams: counts double, ratios stay
    # class 0: IoU 1; class 1: TP 0, FN 1 -> 0; class 2: TP 1, FP 1 -> 1/2.
    assert float(miou.result()) == pytest.approx((1 + 0 + 0.5) / 3)
    assert float(accuracy.result()) == pytest.approx(2 / 3)
    np.testing.assert_array_equal(miou.confusion.numpy(), [[2, 0, 0], [0, 0, 2], [0, 0, 2]])
    restored = confusion.ConfusionMatrixMetric.from_config(miou.get_config())
    assert restored.num_classes == 3 and restored.result_kind == "mean_iou"
    with pytest.raises(tf.errors.InvalidArgumentError, match="num_classes"):
        miou.update_state(np.array([[[7]]]), np.zeros((1, 1, 1, 3), "float32"))


def test_metric_resizes_labels_to_coarse_logits():
    labels = np.kron(np.array([[0, 1], [1, 0]]), np.ones((2, 2), int))[None]
    logits = np.eye(2)[np.array([[[0, 1], [1, 0]]])] * 2.0 - 1.0
    metric = confusion.ConfusionMatrixMetric(2)
    metric.update_state(labels, logits.astype("float32"))
    np.testing.assert_array_equal(metric.confusion.numpy(), [[2, 0], [0, 2]])


def test_whole_and_flip_on_a_pixelwise_model_give_softmax_of_pixels(rng):
    image = rng.normal(size=(5, 7, 2)).astype("float32")
    model = pixelwise_model()
    whole = inference.SegmentationPipeline(model).probabilities(image)
    np.testing.assert_allclose(whole, softmax(image), atol=1e-6)
    flipped = multiscale(model, image, scales=(1.0,), flip=True)
    np.testing.assert_allclose(flipped, softmax(image), atol=1e-6)


def test_multiscale_averages_probabilities_over_scales():
    # Pixelwise model: mean over scales of resize_back(softmax(resize(image))); flipping a
    # pixelwise model changes nothing, so flip=True gives the same mean.
    image = np.random.default_rng(1).normal(size=(8, 16, 2)).astype("float32")
    expected = np.mean(
        [
            tf.image.resize(
                softmax(tf.image.resize(image[None], (8 * s, 16 * s)).numpy()), (8, 16)
            )[0]
            for s in (1, 2)
        ],
        axis=0,
    )
    probs = multiscale(pixelwise_model(), image, scales=(1.0, 2.0), flip=True)
    np.testing.assert_allclose(probs, expected, atol=1e-5)
    # A model that depends on the whole input: average of the two scales' resized probs.
    model = window_mean_model()
    half = tf.image.resize(image[None], (4, 8))
    expected = (
        softmax(image - image.mean((0, 1)))
        + tf.image.resize(
            softmax(half.numpy() - half.numpy().mean((1, 2), keepdims=True)), (8, 16)
        )[0].numpy()
    ) / 2
    probs = multiscale(model, image, scales=(1.0, 0.5), flip=False)
    np.testing.assert_allclose(probs, expected, atol=1e-5)


def test_multiscale_flip_averages_the_mirrored_copy(rng):
    # The ramp model sees column j of the image at column W-1-j of the mirrored copy, so a
    # flip that is dropped, or not mirrored back, changes the average.
    image = rng.normal(size=(3, 5, 2)).astype("float32")
    model = column_ramp_model()
    ramp = np.arange(5, dtype="float32")[None, :, None] * np.array([0.0, 1.0], "float32")
    plain = softmax(image + ramp)
    mirrored = softmax(image[:, ::-1] + ramp)[:, ::-1]
    assert np.abs(plain - mirrored).max() > 0.1  # the test model is asymmetric
    probs = multiscale(model, image, scales=(1.0,), flip=True)
    np.testing.assert_allclose(probs, (plain + mirrored) / 2, atol=1e-6)
    probs = multiscale(model, image, scales=(1.0,), flip=False)
    np.testing.assert_allclose(probs, plain, atol=1e-6)


def test_window_starts_cover_the_image():
    assert inference.window_starts(10, 4, 3) == [0, 3, 6]
    assert inference.window_starts(11, 4, 3) == [0, 3, 6, 7]
    assert inference.window_starts(3, 4, 3) == [0]


def test_sliding_window_averages_overlapping_crops(rng):
    image = rng.normal(size=(4, 6, 2)).astype("float32")
    model = window_mean_model()
    probs = sliding(model, image, crop_size=(4, 4), stride=(2, 2))
    # Windows at columns 0-3 and 2-5: columns 2-3 average the two windows' probabilities.
    left = softmax(image[:, :4] - image[:, :4].mean((0, 1)))
    right = softmax(image[:, 2:] - image[:, 2:].mean((0, 1)))
    expected = np.zeros((4, 6, 2))
    expected[:, :2] = left[:, :2]
    expected[:, 2:4] = (left[:, 2:] + right[:, :2]) / 2
    expected[:, 4:] = right[:, 2:]
    np.testing.assert_allclose(probs, expected, atol=1e-6)
    # A crop larger than the image: zero padding, then cropped back.
    padded = np.pad(image, [(0, 2), (0, 0), (0, 0)])
    probs = sliding(model, image, crop_size=(6, 6))
    np.testing.assert_allclose(probs, softmax(padded - padded.mean((0, 1)))[:4], atol=1e-6)


def test_pipeline_multi_pass_options_and_batches(rng):
    model = column_ramp_model()
    with pytest.raises(ValueError, match="scales"):
        inference.SegmentationPipeline(model, size_policy="multiscale", scales=())
    with pytest.raises(ValueError, match="crop_size"):
        inference.SegmentationPipeline(model, size_policy="sliding")
    with pytest.raises(ValueError, match="stride"):
        inference.SegmentationPipeline(
            model, size_policy="sliding", crop_size=(4, 4), stride=(0, 2)
        )
    pipeline = inference.SegmentationPipeline(model, size_policy="multiscale", scales=(1.0, 0.5))
    with pytest.raises(ValueError, match="averages probabilities"):
        pipeline.logits(np.zeros((4, 4, 2), "float32"))
    # A batch gives each image's own result; class ids are the argmax of the probabilities.
    images = rng.normal(size=(2, 6, 8, 2)).astype("float32")
    batch = pipeline.probabilities(images).numpy()
    for image, probs in zip(images, batch, strict=True):
        np.testing.assert_allclose(probs, pipeline.probabilities(image), atol=1e-6)
    np.testing.assert_array_equal(pipeline.class_ids(images), batch.argmax(-1))


def test_trimap_band_and_boundary_confusion_hand_case():
    label = np.zeros((4, 6), int)
    label[:, 3:] = 1
    label[0, 0] = 255
    band = boundary.trimap_band(label, 1)
    # boundary columns 2 and 3 (class change), widened by 1 -> columns 1..4; the ignored
    # pixel at (0, 0) makes (0, 0), (0, 1), (1, 0) boundary pixels too.
    expected = np.zeros((4, 6), bool)
    expected[:, 1:5] = True
    expected[:3, 0] = True
    np.testing.assert_array_equal(band, expected)
    prediction = np.zeros((4, 6), int)  # predicts class 0 everywhere
    bands = boundary.band_confusions(label, prediction, [0, 1], num_classes=2)
    # width 0: columns 2, 3 (8 pixels) + (0,1), (1,0); all labelled.
    np.testing.assert_array_equal(bands[0], [[6, 0], [4, 0]])
    # width 1: 16 pixels of columns 1..4 + (1,0), (2,0); (0,0) is ignored.
    np.testing.assert_array_equal(bands[1], [[10, 0], [8, 0]])


def test_evaluate_modes_and_reports(tmp_path):
    # Channel 0 high where the label is 0, channel 1 high where it is 1, except one pixel.
    label = np.zeros((8, 8), np.int32)
    label[:, 4:] = 1
    label[0, 0] = 255
    image = np.stack([(label == 0) * 2.0 - 1.0, (label == 1) * 2.0 - 1.0], -1).astype("float32")
    image[7, 7] = [1.0, -1.0]  # one wrong pixel of class 1
    model = pixelwise_model()
    data = [(image[None], label[None])]
    whole = evaluator.evaluate(
        model, data, num_classes=2, mode="whole", trimap_widths=(1,), verbose=0
    )
    np.testing.assert_array_equal(whole["confusion"], [[31, 0], [1, 31]])
    assert whole["mean_iou"] == pytest.approx((31 / 32 + 31 / 32) / 2)
    assert whole["per_class_iou"]["class_1"] == pytest.approx(31 / 32)
    sliding = evaluator.evaluate(
        model, data, num_classes=2, mode="sliding", crop_size=(4, 4), verbose=0
    )
    np.testing.assert_array_equal(sliding["confusion"], whole["confusion"])
    assert sliding["eval_mode"] == {"mode": "sliding", "crop_size": [4, 4], "stride": None}
    evaluator.write_reports(whole, tmp_path, {"checkpoint": "x.keras"})
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert metrics["num_images"] == 1 and metrics["checkpoint"] == "x.keras"
    assert set(metrics["trimap"]["1"]) == {"mean_iou", "pixel_accuracy"}
    rows = list(csv.reader(open(tmp_path / "confusion_matrix.csv")))
    assert rows[1] == ["class_0", "31", "0"] and rows[2] == ["class_1", "1", "31"]
    png = tf.io.decode_png(tf.io.read_file(str(tmp_path / "confusion_matrix.png")))
    # matplotlib figure when installed (class names, colour bar), else the 96x96 heat map.
    assert png.shape[-1] == 3 and min(png.shape[:2]) >= 32
    with pytest.raises(ValueError, match="record 0: image"):
        evaluator.evaluate(model, [(image, label[:4])], num_classes=2, verbose=0)


def test_evaluate_multiscale_flip_and_max_images(rng):
    # Ramp model, scale 1 with flip: the prediction is the argmax of the mean of the plain and
    # the mirrored probabilities, which differs from the plain argmax on some pixels.
    images = rng.normal(scale=2.0, size=(3, 4, 6, 2)).astype("float32")
    labels = rng.integers(0, 2, size=(3, 4, 6)).astype("int32")
    ramp = np.arange(6, dtype="float32")[None, :, None] * np.array([0.0, 1.0], "float32")
    data = [(image[None], label[None]) for image, label in zip(images, labels, strict=True)]

    def confusion_of(predictions, count):
        matrix = np.zeros((2, 2), int)
        for label, prediction in zip(labels[:count], predictions[:count], strict=True):
            np.add.at(matrix, (label.ravel(), prediction.ravel()), 1)
        return matrix

    plain = [softmax(image + ramp) for image in images]
    mirrored = [softmax(image[:, ::-1] + ramp)[:, ::-1] for image in images]
    mean = [(p + m) / 2 for p, m in zip(plain, mirrored, strict=True)]
    flipped_argmax = [m.argmax(-1) for m in mean]
    assert any((m.argmax(-1) != p.argmax(-1)).any() for m, p in zip(mean, plain, strict=True))
    results = evaluator.evaluate(
        column_ramp_model(),
        data,
        num_classes=2,
        mode="multiscale",
        scales=(1.0,),
        flip=True,
        max_images=2,
        verbose=0,
    )
    assert results["num_images"] == 2
    np.testing.assert_array_equal(results["confusion"], confusion_of(flipped_argmax, 2))
