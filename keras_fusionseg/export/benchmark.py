"""Measures shipped forms against the Keras model: latency, logit error, mIoU, int8 layer error.

Also the machine-side helpers of `scripts/benchmark_models.py`: the CPU's name, a matmul that
measures the machine's fp32 throughput in the same run, interleaved timing rounds and achieved
GFLOP/s.
"""

import csv
import io
import time

import numpy as np
import tensorflow as tf

from keras_fusionseg.evaluation.inference import SegmentationPipeline
from keras_fusionseg.export.tflite import TFLiteSegmenter, make_converter
from keras_fusionseg.utils.machine import describe_machine
from keras_fusionseg.utils.precision import onednn_setting  # noqa: F401  (re-exported)


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
    names = ["keras", *runners]
    confusion = {name: np.zeros((num_classes, num_classes)) for name in names}
    max_diff = dict.fromkeys(names, 0.0)
    agree = dict.fromkeys(names, 0)
    pixels = 0
    for image, label in examples:
        reference = pipeline.logits(image).numpy()
        outputs = {"keras": reference}
        for name, runner in runners.items():
            outputs[name] = runner.logits(image).numpy()
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


def cpu_model_name():
    """The CPU's model name as `lscpu` gives it ("Model name:"), else from /proc/cpuinfo
    (`utils.machine.describe_machine` has the family/model number and ISA as well)."""
    return describe_machine(onednn=False)["cpu"]


def achieved_gflops(macs, images_per_second):
    """Achieved GFLOP/s of a model: 2 FLOPs per multiply-add, times images per second."""
    return 2.0 * macs * images_per_second / 1e9


def matmul_runner(size=2048, dtype=tf.float32, seed=0):
    """(run, flops): `run()` multiplies two `size` x `size` matrices and waits for the result.

    One square fp32 matmul is the best case of a CPU's dense kernels (oneDNN/Eigen GEMM on all
    intra-op threads), so its FLOP/s, timed in the same rounds as the models, is the machine's
    measured peak under the same load.
    """
    # Variables, so that no graph optimisation can fold the product into a constant.
    a = tf.Variable(tf.random.stateless_uniform((size, size), (seed, 1), dtype=dtype))
    b = tf.Variable(tf.random.stateless_uniform((size, size), (seed, 2), dtype=dtype))
    matmul = tf.function(lambda: tf.reduce_sum(tf.matmul(a, b)), autograph=False)

    def run():
        matmul().numpy()

    return run, 2.0 * size**3


def interleaved_times(runners, rounds):
    """Wall times (s) of each runner over `rounds` interleaved rounds.

    Each round calls every runner once; the starting runner rotates from round to round, so
    no runner always follows the same one (caches, turbo, a neighbour's burst of load).

    Args:
        runners: list of zero-argument callables that block until their work is done.
        rounds: int.

    Returns:
        list (one per runner) of lists of `rounds` times in seconds.
    """
    times = [[] for _ in runners]
    for round_index in range(rounds):
        for k in range(len(runners)):
            i = (round_index + k) % len(runners)
            start = time.perf_counter()
            runners[i]()
            times[i].append(time.perf_counter() - start)
    return times


__all__ = [
    "TFLiteSegmenter",
    "achieved_gflops",
    "compare_on_split",
    "cpu_model_name",
    "int8_error_by_layer",
    "interleaved_times",
    "matmul_runner",
    "median_latency_ms",
    "onednn_setting",
]
