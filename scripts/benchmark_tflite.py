"""TFLite table: size, latency, error and mIoU of fp32 / fp16 / dynamic int8 / full int8.

    python scripts/benchmark_tflite.py --workdir=runs/quickstart      # a trained model
    python scripts/benchmark_tflite.py                                # trains a tiny one first

Without --workdir, a narrow DeepLabv3+ (MobileNetV2 x0.35, OS16) is trained on the built-in
synthetic_shapes data for --train_steps steps (Adam, 96x96 crops, batch 8). Every conversion runs on the validation split
of the model's dataset (or --source/--split) with LiteRT, one image at a time; latency is
measured on the first validation image (padded to a multiple of 32), --num_threads threads.
Full int8 is calibrated on --calibration_images training images. Also lists the layers with
the largest int8 error (QuantizationDebugger). Prints a Markdown table, writes JSON.
"""

import json
import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from absl import app, flags  # noqa: E402

_WORKDIR = flags.DEFINE_string("workdir", None, "Training workdir (or a .keras file).")
_TRAIN_STEPS = flags.DEFINE_integer("train_steps", 800, "Steps of the fallback training run.")
_BN_MOMENTUM = flags.DEFINE_float("bn_momentum", 0.9, "BN momentum of the fallback training.")
_TRAIN_DIR = flags.DEFINE_string("train_dir", "runs/benchmark_tflite", "Fallback workdir.")
_SOURCE = flags.DEFINE_string("source", None, "load_split source (default: the workdir's).")
_DATA_DIR = flags.DEFINE_string("data_dir", None, "data_dir of --source.")
_SPLIT = flags.DEFINE_string("split", "val", "Evaluation split.")
_CALIBRATION_SPLIT = flags.DEFINE_string("calibration_split", "train", "Calibration split.")
_EVAL_IMAGES = flags.DEFINE_integer("eval_images", 50, "Evaluation images.")
_CALIBRATION_IMAGES = flags.DEFINE_integer("calibration_images", 50, "Calibration images.")
_NUM_THREADS = flags.DEFINE_integer("num_threads", 1, "Interpreter threads.")
_RUNS = flags.DEFINE_integer("runs", 30, "Timed runs per form.")
_FIXED = flags.DEFINE_bool("fixed_shape_too", True, "Also convert fp32/full int8 at fixed size.")
_OUTPUT = flags.DEFINE_string("output", None, "Folder for the .tflite files and results.json.")


def _train_fallback(workdir):
    """A few minutes of Adam on synthetic_shapes for a narrow DeepLabv3+, saved as a workdir."""
    import keras

    from keras_fusionseg import data, models
    from keras_fusionseg.training.losses import SegmentationCrossEntropy

    keras.utils.set_random_seed(0)
    info = data.get_dataset_info("synthetic_shapes")
    model = models.build(
        "deeplabv3plus",
        num_classes=info.num_classes,
        backbone="mobilenetv2",
        backbone_options={"alpha": 0.35},
        output_stride=16,
        aspp_filters=64,
        decoder_filters=64,
        low_level_filters=24,
    )
    # The reference BN momentum (0.9997) needs thousands of steps before the moving statistics
    # used at inference settle; a short run needs a faster one.
    for layer in model._flatten_layers(include_self=False, recursive=True):
        if isinstance(layer, keras.layers.BatchNormalization):
            layer.momentum = _BN_MOMENTUM.value
    train = data.training_pipeline(
        data.load_split("synthetic_shapes", "train"),
        crop_size=96,
        batch_size=8,
        seed=0,
        repeat=True,
    )
    model.compile(
        optimizer=keras.optimizers.Adam(
            keras.optimizers.schedules.CosineDecay(5e-3, _TRAIN_STEPS.value)
        ),
        loss=SegmentationCrossEntropy(info.num_classes),
    )
    model.fit(train, epochs=1, steps_per_epoch=_TRAIN_STEPS.value, verbose=2)
    os.makedirs(os.path.join(workdir, "checkpoints"), exist_ok=True)
    model.save(os.path.join(workdir, "checkpoints", "model.keras"))
    with open(os.path.join(workdir, "config.json"), "w") as f:
        json.dump({"data": {"name": "synthetic_shapes"}, "train_steps": _TRAIN_STEPS.value}, f)
    return workdir


def _dataset_of(model, workdir):
    """(dataset name, data_dir) the model was trained on (`models.describe_model`)."""
    from keras_fusionseg.models import describe_model

    dataset = describe_model(model, path=workdir)["dataset"]
    return (dataset["name"], dataset["data_dir"]) if dataset else (None, None)


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
    import numpy as np
    import tensorflow as tf

    from keras_fusionseg import data, export
    from keras_fusionseg.export.benchmark import (
        compare_on_split,
        int8_error_by_layer,
        median_latency_ms,
    )

    workdir = _WORKDIR.value or _train_fallback(_TRAIN_DIR.value)
    model = export.load_keras_model(workdir)
    source, data_dir = _dataset_of(model, workdir)
    source, data_dir = _SOURCE.value or source, _DATA_DIR.value or data_dir
    if source is None:
        raise app.UsageError("--source is needed (the model has no workdir config).")
    info = data.get_dataset_info(source) if source in data.list_datasets() else None
    num_classes = info.num_classes if info else int(model.output_shape[-1])
    channels = model.input_shape[-1]
    examples = [
        (image[0].astype(np.uint8), label[0])
        for image, label in data.eval_pipeline(
            data.load_split(source, _SPLIT.value, data_dir=data_dir), channels=channels
        )
        .take(_EVAL_IMAGES.value)
        .as_numpy_iterator()
    ]
    height, width = examples[0][0].shape[:2]
    fixed_size = (height + (-height % 32), width + (-width % 32))
    calibration = export.representative_images(
        source,
        _CALIBRATION_SPLIT.value,
        data_dir=data_dir,
        num_images=_CALIBRATION_IMAGES.value,
        channels=channels,
    )
    forms = [(q, None) for q in export.QUANTIZATIONS]
    if _FIXED.value:
        forms += [("fp32", fixed_size), ("full_int8", fixed_size)]
    output = _OUTPUT.value or os.path.join(
        workdir if os.path.isdir(workdir) else ".", "tflite_benchmark"
    )
    os.makedirs(output, exist_ok=True)
    runners, sizes = {}, {}
    for quantization, size in forms:
        name = quantization + ("" if size is None else f"@{size[0]}x{size[1]}")
        if size is None:
            images = calibration
        else:
            images = [tf.image.resize(image, size).numpy().round() for image in calibration]
        flatbuffer = export.convert_to_tflite(
            model, quantization=quantization, input_size=size, representative_images=images
        )
        path = os.path.join(output, f"model_{name.replace('@', '_')}.tflite")
        with open(path, "wb") as f:
            f.write(flatbuffer)
        sizes[name] = len(flatbuffer)
        runners[name] = export.TFLiteSegmenter(flatbuffer, num_threads=_NUM_THREADS.value)
        print(f"converted {name}: {len(flatbuffer) / 1e6:.3f} MB", flush=True)

    scores = compare_on_split(model, runners, examples, num_classes)
    probe = np.pad(
        examples[0][0], [(0, fixed_size[0] - height), (0, fixed_size[1] - width), (0, 0)]
    )
    latency = {}
    for name, runner in runners.items():
        # the interpreter alone (`runner.model`), as the Keras row times the model alone
        latency[name] = median_latency_ms(lambda r=runner: r.model(probe), runs=_RUNS.value)
    keras_fn = tf.function(lambda x: model(x, training=False))
    probe_tensor = tf.constant(probe[None].astype("float32"))
    latency["keras"] = median_latency_ms(lambda: keras_fn(probe_tensor), runs=_RUNS.value)

    worst_layers = int8_error_by_layer(model, calibration[:10], None, top=12)
    results = {
        "model": os.path.abspath(workdir),
        "dataset": source,
        "split": _SPLIT.value,
        "eval_images": len(examples),
        "latency_input": list(fixed_size),
        "num_threads": _NUM_THREADS.value,
        "forms": {
            name: {
                "size_bytes": sizes.get(name),
                "latency_ms_median": latency[name][0],
                "latency_ms_p10": latency[name][1],
                **scores[name],
            }
            for name in ["keras", *runners]
        },
        "int8_worst_layers": [
            {"tensor": t, "op": op, "rmse_over_scale": r, "rmse": e} for t, op, r, e in worst_layers
        ],
    }
    with open(os.path.join(output, "results.json"), "w") as f:
        json.dump(results, f, indent=2)

    print(
        f"\n{source}/{_SPLIT.value}, {len(examples)} images; latency on "
        f"{fixed_size[0]}x{fixed_size[1]}, {_NUM_THREADS.value} thread(s)\n"
    )
    print(
        "| form | file size | latency median (p10) | max abs diff vs Keras | mIoU | pixels = Keras |"
    )
    print("|---|---|---|---|---|---|")
    for name, row in results["forms"].items():
        size = f"{row['size_bytes'] / 1e6:.2f} MB" if row["size_bytes"] else "-"
        print(
            f"| {name} | {size} | {row['latency_ms_median']:.1f} ({row['latency_ms_p10']:.1f}) ms "
            f"| {row['max_abs_diff']:.2g} | {100 * row['mean_iou']:.2f} "
            f"| {100 * row['agreement']:.2f}% |"
        )
    print("\nfull int8, largest per-layer error (RMSE / output scale; 0.29 = rounding only):")
    for row in results["int8_worst_layers"]:
        print(f"  {row['rmse_over_scale']:.2f}  {row['op']:<16} {row['tensor'][:110]}")


if __name__ == "__main__":
    app.run(main)
