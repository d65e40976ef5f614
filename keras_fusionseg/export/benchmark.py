"""Measures shipped forms against the Keras model: latency, logit error, mIoU, int8 layer error."""

import csv
import io
import time

import numpy as np
import tensorflow as tf

from keras_fusionseg.export.saved_model import SegmentationPipeline
from keras_fusionseg.export.tflite import TFLiteSegmenter, make_converter


def median_latency_ms(run, *, warmup=3, runs=20):
    """Median and 10th-percentile wall time (ms) of `run()` after `warmup` calls.

    The 10th percentile is reported beside the median because on a shared machine the fastest
    runs are the ones least disturbed by other processes.
    """
    for _ in range(warmup):
        run()
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        run()
        times.append((time.perf_counter() - start) * 1e3)
    return float(np.median(times)), float(np.percentile(times, 10))


def compare_on_split(
    keras_model, runners, examples, num_classes, *, ignore_label=255, **pipeline_options
):
    """mIoU of the Keras model and each TFLite runner, and their max abs logit difference.

    Args:
        keras_model: the float `keras.Model`.
        runners: dict name -> `TFLiteSegmenter`.
        examples: iterable of (uint8 image (H, W, C), int label (H, W)).
        num_classes: int.
        ignore_label: int, label value left out of the mIoU.
        **pipeline_options: size handling of the Keras model (`SegmentationPipeline`;
            default: the whole image, as the exported SavedModel and `evaluate.py`).

    Returns:
        dict name -> {"mean_iou", "max_abs_diff", "agreement"} with "keras" included
        (agreement = fraction of pixels whose class equals the Keras model's).
    """
    from keras_fusionseg.evaluation import confusion_from_labels, iou_from_confusion

    pipeline = SegmentationPipeline(keras_model, **pipeline_options)
    keras_logits = tf.function(pipeline.logits, reduce_retracing=True)
    names = ["keras", *runners]
    confusion = {name: np.zeros((num_classes, num_classes)) for name in names}
    max_diff = dict.fromkeys(names, 0.0)
    agree = dict.fromkeys(names, 0)
    pixels = 0
    for image, label in examples:
        reference = keras_logits(tf.constant(image[None]))[0].numpy()
        outputs = {"keras": reference}
        for name, runner in runners.items():
            outputs[name] = runner.full_logits(image)
        reference_ids = reference.argmax(-1)
        pixels += reference_ids.size
        for name, logits in outputs.items():
            ids = logits.argmax(-1)
            confusion[name] += confusion_from_labels(label, ids, num_classes, ignore_label).numpy()
            max_diff[name] = max(max_diff[name], float(np.abs(logits - reference).max()))
            agree[name] += int((ids == reference_ids).sum())
    return {
        name: {
            "mean_iou": iou_from_confusion(confusion[name])["mean_iou"],
            "max_abs_diff": max_diff[name],
            "agreement": agree[name] / max(pixels, 1),
        }
        for name in names
    }


def int8_error_by_layer(model, representative_images, input_size, top=10):
    """Layers of the full-int8 model with the largest quantization error, worst first.

    Uses `tf.lite.experimental.QuantizationDebugger`, which runs each quantized op beside its
    float version on the calibration images; the error is the RMSE between them divided by
    the op's output quantization scale (about 0.29 = ideal rounding error).

    Returns:
        list of (tensor name, op name, rmse/scale, rmse) tuples.
    """
    converter = make_converter(
        model,
        quantization="full_int8",
        input_size=input_size,
        representative_images=representative_images,
        uint8_input=False,
    )
    images = [np.asarray(image, np.float32) for image in representative_images]

    def debug_dataset():
        for image in images:
            yield [image.reshape((1,) + image.shape[-3:])]

    debugger = tf.lite.experimental.QuantizationDebugger(
        converter=converter, debug_dataset=debug_dataset
    )
    debugger.run()
    buffer = io.StringIO()
    debugger.layer_statistics_dump(buffer)
    buffer.seek(0)
    rows = []
    for row in csv.DictReader(buffer):
        rmse = float(np.sqrt(float(row["mean_squared_error"])))
        scale = float(row["scale"])
        rows.append(
            (row["tensor_name"], row["op_name"], rmse / scale if scale else float("nan"), rmse)
        )
    rows.sort(key=lambda row: -np.nan_to_num(row[2], nan=-1.0))
    return rows[:top]


__all__ = ["TFLiteSegmenter", "compare_on_split", "int8_error_by_layer", "median_latency_ms"]
