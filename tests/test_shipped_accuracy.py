"""The shipped forms give the class ids that evaluate.py scores (issue 18; issue 14 item 4).

Uses the quick-start checkpoint kept in tests/data (DeepLabv3+ MobileNetV2 x0.35 trained by an
earlier default of `python scripts/train.py`, see tests/data/README.md) on synthetic scenes of
odd sizes.
"""

import json
import pathlib

import numpy as np
import pytest
import tensorflow as tf
from PIL import Image

from keras_fusionseg import data, evaluation, export
from keras_fusionseg.export import predict_files as pf
from keras_fusionseg.export.serving import PredictionService

CHECKPOINT = pathlib.Path(__file__).resolve().parent / "data" / "quickstart.keras"
NUM_CLASSES = 6


def _scenes(sizes_and_counts):
    examples = []
    for size, count in sizes_and_counts:
        split = data.load_split("synthetic_shapes", "val", num_images=count, image_size=size)
        for element in split.as_numpy_iterator():
            examples.append((element["image"], element["label"][..., 0].astype(np.int64)))
    return examples


@pytest.fixture(scope="module")
def shipped(tmp_path_factory):
    """The trained model, its SavedModel (default export) and fp32 TFLite file."""
    root = tmp_path_factory.mktemp("shipped")
    model = export.load_keras_model(CHECKPOINT)
    export.export_saved_model(model, root / "sm", signatures=("serving_default",))
    (root / "model.tflite").write_bytes(export.convert_to_tflite(model))
    return model, root


def _scores(class_ids_fn, examples):
    confusion = np.zeros((NUM_CLASSES, NUM_CLASSES))
    ids = []
    for image, label in examples:
        predicted = np.asarray(class_ids_fn(image))
        ids.append(predicted)
        confusion += evaluation.confusion_from_labels(label, predicted, NUM_CLASSES, 255).numpy()
    return evaluation.iou_from_confusion(confusion)["mean_iou"], ids


@pytest.mark.slow  # SavedModel export and TFLite conversion of a MobileNetV2 model
def test_saved_model_and_tflite_ship_the_evaluated_accuracy(shipped):
    model, root = shipped
    examples = _scenes((((100, 113), 12), ((360, 480), 2)))
    reported = evaluation.evaluate(model, examples, num_classes=NUM_CLASSES, verbose=0)
    pipeline = evaluation.SegmentationPipeline(model)
    reference = [pipeline.class_ids(image) for image, _ in examples]
    assert reported["mean_iou"] > 0.5  # a trained model, or the comparison below means little

    saved_model = export.load_segmenter(root / "sm")
    lite = export.load_segmenter(root / "model.tflite")
    for name, segmenter in (("SavedModel", saved_model), ("TFLite fp32", lite)):
        miou, ids = _scores(segmenter.class_ids, examples)
        assert abs(miou - reported["mean_iou"]) <= 0.001, (name, miou, reported["mean_iou"])
        for (image, _), got, want in zip(examples, ids, reference, strict=True):
            agreement = float((got == want).mean())
            assert agreement >= 0.999, (name, image.shape, agreement)


def _evaluate_mismatch(model, image, class_ids):
    """Pixels where evaluate()'s own prediction differs from `class_ids`: evaluate() scores
    `class_ids` as the label, so its confusion matrix is diagonal exactly when they agree."""
    confusion = evaluation.evaluate(
        model, [(image, class_ids)], num_classes=NUM_CLASSES, verbose=0
    )["confusion"]
    return int(confusion.sum() - np.trace(confusion))


@pytest.mark.slow  # SavedModel export and TFLite conversion of a MobileNetV2 model
def test_every_path_gives_the_evaluated_class_ids_on_odd_sizes(shipped, tmp_path):
    # evaluate(), predict (predict_files on the .keras file, as scripts/predict.py), the
    # SavedModel's serving_default signature, the serving REST service and the fp32 TFLite
    # model, each on whole images of sizes no output stride divides.
    model, root = shipped
    examples = _scenes((((67, 93), 2), ((101, 113), 2)))
    folder = tmp_path / "images"
    folder.mkdir()
    for index, (image, _) in enumerate(examples):
        Image.fromarray(image).save(folder / f"{index}.png")
    files = pf.list_image_files([folder])
    names, palette = pf.class_names_and_palette(None, NUM_CLASSES)
    written = pf.predict_files(
        export.load_segmenter(CHECKPOINT),
        files,
        tmp_path / "out",
        class_names=names,
        palette=palette,
        progress=False,
    )
    predicted = {
        int(pathlib.Path(path).stem): np.asarray(Image.open(label_path)).astype(np.int32)
        for path, (label_path, _) in zip(files, written, strict=True)
    }
    signature = tf.saved_model.load(str(root / "sm")).signatures["serving_default"]
    service = PredictionService(str(root / "sm"), "shipped", warmup=False)
    lite = export.load_segmenter(root / "model.tflite")
    keras_logits = evaluation.SegmentationPipeline(model).logits
    tflite_changed = pixels = 0
    for index, (image, _) in enumerate(examples):
        predict_ids = predicted[index]
        assert predict_ids.shape == image.shape[:2]
        assert len(np.unique(predict_ids)) >= 2  # non-trivial class ids
        assert _evaluate_mismatch(model, image, predict_ids) == 0, ("predict", image.shape)
        saved = signature(images=tf.constant(image[None]))["class_ids"][0].numpy()
        np.testing.assert_array_equal(saved, predict_ids, err_msg=f"SavedModel {image.shape}")
        body = json.dumps({"instances": [image.tolist()]}).encode()
        served = np.asarray(service.predict(body)["predictions"][0])
        np.testing.assert_array_equal(served, predict_ids, err_msg=f"serving {image.shape}")
        # TFLite fp32 logits differ from TensorFlow's by ~1e-5: only near-ties may flip.
        # Measured: 0 of these 35,288 pixels (0 of 516,488 with the 100x113 and 360x480
        # scenes above), oneDNN on and off.
        lite_ids = lite.class_ids(image)
        changed = lite_ids != predict_ids
        top2 = np.sort(keras_logits(image).numpy(), axis=-1)[..., -2:]
        gap = top2[..., 1] - top2[..., 0]
        assert (gap[changed] < 1e-3).all(), ("TFLite differs beyond ties", gap[changed].max())
        tflite_changed += int(changed.sum())
        pixels += changed.size
    assert tflite_changed / pixels <= 1e-3, (tflite_changed, pixels)


def test_old_constant_padding_default_would_not_ship_it():
    # Guards the choice of default: padding 360x480 images to 384x480 with grey changes
    # the predictions near the bottom edge, so it cannot be the default.
    model = export.load_keras_model(CHECKPOINT)
    image = _scenes((((360, 480), 2),))[-1][0]
    padded = export.SegmentationPipeline(model, size_policy="pad", pad_mode="constant")
    whole = export.SegmentationPipeline(model)
    assert whole.size_policy == "whole"
    changed = np.mean(padded.class_ids(image) != whole.class_ids(image))
    assert float(changed) > 0
