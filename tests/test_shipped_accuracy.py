"""The exported model ships the accuracy that evaluate.py reports (issue: export size policy).

Uses the quick-start checkpoint kept in tests/data (DeepLabv3+ MobileNetV2 x0.35 trained by
`python scripts/train.py`, see tests/data/README.md) on synthetic scenes of odd sizes.
"""

import pathlib

import numpy as np
import pytest
import tensorflow as tf

from keras_fusionseg import data, evaluation, export
from keras_fusionseg.evaluation.inference import Predictor

CHECKPOINT = pathlib.Path(__file__).resolve().parent / "data" / "quickstart.keras"


@pytest.fixture(scope="module")
def trained():
    model = export.load_keras_model(CHECKPOINT)
    examples = []
    for size, count in (((100, 113), 12), ((360, 480), 2)):
        split = data.load_split("synthetic_shapes", "val", num_images=count, image_size=size)
        for element in split.as_numpy_iterator():
            examples.append((element["image"], element["label"][..., 0].astype(np.int64)))
    return model, examples


def _scores(class_ids_fn, examples, num_classes=6):
    confusion = np.zeros((num_classes, num_classes))
    ids = []
    for image, label in examples:
        predicted = np.asarray(class_ids_fn(image))
        ids.append(predicted)
        confusion += evaluation.confusion_from_labels(label, predicted, num_classes, 255).numpy()
    return evaluation.iou_from_confusion(confusion)["mean_iou"], ids


def test_saved_model_and_tflite_ship_the_evaluated_accuracy(trained, tmp_path):
    model, examples = trained
    reported = evaluation.evaluate(model, examples, num_classes=6, verbose=0)["mean_iou"]
    predictor = Predictor(model)
    reference = [
        np.asarray(predictor(image[None].astype(np.float32))[0]).argmax(-1) for image, _ in examples
    ]
    assert reported > 0.5  # a trained model, or the comparison below means little

    export.export_saved_model(model, tmp_path / "sm", signatures=("serving_default",))
    saved_model = export.load_segmenter(tmp_path / "sm")
    tflite_path = tmp_path / "model.tflite"
    tflite_path.write_bytes(export.convert_to_tflite(model))
    lite = export.load_segmenter(tflite_path)
    for name, segmenter in (("SavedModel", saved_model), ("TFLite fp32", lite)):
        miou, ids = _scores(segmenter.class_ids, examples)
        assert abs(miou - reported) <= 0.001, (name, miou, reported)
        for (image, _), got, want in zip(examples, ids, reference, strict=True):
            agreement = float((got == want).mean())
            assert agreement >= 0.999, (name, image.shape, agreement)


def test_old_constant_padding_default_would_not_ship_it(trained):
    # Guards the choice of default: padding 360x480 images to 384x480 with grey changes
    # the predictions near the bottom edge, so it cannot be the default.
    model, examples = trained
    padded = export.SegmentationPipeline(model, size_policy="pad", pad_mode="constant")
    whole = export.SegmentationPipeline(model)
    assert whole.size_policy == "whole"
    image = tf.constant(examples[-1][0][None])
    changed = tf.reduce_mean(
        tf.cast(
            tf.argmax(padded.logits(image), -1) != tf.argmax(whole.logits(image), -1), tf.float32
        )
    )
    assert float(changed) > 0
