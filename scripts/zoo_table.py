r"""The model-zoo table: every CamVid preset scored and timed in one run, like for like.

For each preset: val mIoU single scale (the whole image, as shipped) and multi-scale + flip
(the config's eval scales), per-class IoU, parameters, multiply-adds and images/s at one
input size (batch 1, interleaved rounds after a warm-up, median). Prints Markdown tables for
the README and writes them (and the numbers) as JSON. Example:

    python scripts/zoo_table.py --data_dir=../shared/data/camvid --json_out=zoo.json

Presets of the equal-budget comparison: `configs/camvid.py:model=<name>,backbone=mobilenetv2`,
each trained 60 minutes on the same 2-core machine (README "Presets").
"""

import json
import os
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from absl import app, flags  # noqa: E402

_PRESETS = flags.DEFINE_list("presets", None, "Preset names (default: every CamVid preset).")
_DATA_DIR = flags.DEFINE_string("data_dir", "../shared/data/camvid", "CamVid folder.")
_SPLIT = flags.DEFINE_string("split", "val", "Split to score.")
_INPUT_SIZE = flags.DEFINE_list("input_size", ["360", "480"], "H,W of the timed input.")
_RUNS = flags.DEFINE_integer("runs", 5, "Timed rounds (one image per preset per round).")
_MULTISCALE = flags.DEFINE_bool("multiscale", True, "Also score multi-scale + flip.")
_MAX_IMAGES = flags.DEFINE_integer("max_images", 0, "Score only this many images (0: all).")
_JSON_OUT = flags.DEFINE_string("json_out", None, "Also write the rows as JSON here.")
_FOLD_BATCH_NORM = flags.DEFINE_bool(
    "fold_batch_norm",
    True,
    "Score and time each preset with batch norms folded into its convs, the default inference "
    "path of predict.py, evaluate.py and export.py (params and MACs: the preset as trained).",
)


def score(model, metadata, mode):
    """`evaluation.evaluate` of a preset on the split, with its training config's eval scales."""
    from keras_fusionseg import data
    from keras_fusionseg.evaluation import evaluator
    from keras_fusionseg.models import presets

    dataset = metadata["dataset"]
    scales = tuple(presets.training_config(metadata).eval.scales)
    records = data.load_split(
        dataset["name"], _SPLIT.value, data_dir=_DATA_DIR.value, num_classes=dataset["num_classes"]
    )
    return evaluator.evaluate(
        model,
        records,
        num_classes=dataset["num_classes"],
        ignore_label=dataset["ignore_label"],
        class_names=dataset["class_names"],
        mode=mode,
        scales=scales,
        flip=True,
        max_images=_MAX_IMAGES.value,
        verbose=0,
    )


def images_per_second(models, height, width):
    """Median images/s per model: `runs` interleaved rounds of one batch-1 pass each."""
    import numpy as np
    import tensorflow as tf

    image = tf.constant(np.random.default_rng(0).uniform(0, 255, (1, height, width, 3)), "float32")
    calls = {name: tf.function(model) for name, model in models.items()}
    for call in calls.values():
        call(image)  # trace and warm up
    seconds = {name: [] for name in calls}
    for _ in range(_RUNS.value):
        for name, call in calls.items():
            start = time.perf_counter()
            tf.nest.map_structure(lambda t: t.numpy(), call(image))
            seconds[name].append(time.perf_counter() - start)
    return {name: 1.0 / float(np.median(times)) for name, times in seconds.items()}


def markdown(rows, class_names):
    lines = [
        "| preset | val mIoU | ms+flip | params (M) | MACs (B) | images/s | training |",
        "|---|---|---|---|---|---|---|",
    ]
    for row in rows:
        multiscale = f"{100 * row['multiscale_miou']:.1f}" if "multiscale_miou" in row else "-"
        lines.append(
            f"| `{row['preset']}` | {100 * row['miou']:.1f} | {multiscale} | "
            f"{row['params'] / 1e6:.2f} | {row['macs'] / 1e9:.2f} | "
            f"{row['images_per_second']:.2f} | {row['training']} |"
        )
    lines += ["", "| preset | " + " | ".join(class_names) + " |"]
    lines.append("|---|" + "---|" * len(class_names))
    for row in rows:
        ious = " | ".join(
            "-" if row["per_class_iou"][name] is None else f"{100 * row['per_class_iou'][name]:.1f}"
            for name in class_names
        )
        lines.append(f"| `{row['preset']}` | {ious} |")
    return "\n".join(lines)


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
    height, width = (int(v) for v in _INPUT_SIZE.value)
    from keras_fusionseg.export import fold_batch_norm_if_functional
    from keras_fusionseg.models import presets
    from keras_fusionseg.utils import counting, machine

    names = _PRESETS.value or [
        name
        for name in presets.list_presets()
        if presets.load_preset_metadata(name)["dataset"]["name"] == "camvid"
    ]
    rows, loaded = [], {}
    for name in names:
        metadata = presets.load_preset_metadata(name)
        trained = presets.from_preset(name)
        training = metadata["training"]
        row = {
            "preset": name,
            "params": counting.count_parameters(trained)["total"],
            "macs": counting.count_macs(trained, (height, width)),
            "training": f"{training['minutes']:.1f} min, {training['steps']:,} steps",
        }
        model = fold_batch_norm_if_functional(trained) if _FOLD_BATCH_NORM.value else trained
        loaded[name] = model
        single = score(model, metadata, "whole")
        row.update(miou=single["mean_iou"], per_class_iou=single["per_class_iou"])
        if _MULTISCALE.value:
            row["multiscale_miou"] = score(model, metadata, "multiscale")["mean_iou"]
        rows.append(row)
        print(f"{name}: val mIoU {row['miou']:.4f}", flush=True)
    speeds = images_per_second(loaded, height, width)
    for row in rows:
        row["images_per_second"] = speeds[row["preset"]]
    class_names = presets.load_preset_metadata(names[0])["dataset"]["class_names"]
    cpu = machine.machine_label(machine.describe_machine())
    path = "batch norms folded" if _FOLD_BATCH_NORM.value else "as trained"
    print(
        f"\n{len(rows)} presets, {_SPLIT.value} split, timed at {height}x{width}, batch 1, "
        f"median of {_RUNS.value} interleaved rounds, {path}, on {cpu}\n"
    )
    print(markdown(rows, class_names))
    if _JSON_OUT.value:
        with open(_JSON_OUT.value, "w") as f:
            record = {
                "input_size": [height, width],
                "fold_batch_norm": _FOLD_BATCH_NORM.value,
                "machine": cpu,
                "rows": rows,
            }
            json.dump(record, f, indent=2)


if __name__ == "__main__":
    app.run(main)
