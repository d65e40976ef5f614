r"""Parameters, multiply-adds and inference speed of several models, measured in one run.

Each model spec is `name[:backbone[:output_stride[:key=value[:key=value...]]]]`; option keys
starting with `backbone.` go to the backbone (e.g. `backbone.alpha=0.35`). Specs are separated
by commas outside brackets. Models are timed in interleaved rounds (one batch of 1 per model
per round, after a warm-up; the first model of a round rotates), so that load changes on a
shared machine hit every model alike; the table reports the median images/s.

A `--peak_matmul_size`^2 fp32 matmul is timed in the same rounds: its median GFLOP/s is the
machine's measured peak under the same load, and each model's achieved GFLOP/s
(2 x MACs x images/s) is also given as a share of it. `--fold_batch_norm` and
`--jit_compile` choose the inference path ("both" times each model both ways in the same
rounds); the keras-hub peer goes through the same path as ours. `--precision=both` also times
each of our models rebuilt in bfloat16 (`export.optimize.to_bfloat16`: mixed_bfloat16 policy,
float32 weights and logits) as extra rows whose path starts with "bfloat16" (`bfloat16`: those
rows only); the keras-hub peer cannot be rebuilt that way and gets no bfloat16 rows. The JSON
records whether this CPU runs bf16 natively (`utils.precision.native_bfloat16`).

    python scripts/benchmark_models.py \
        --models=deeplabv3plus:mobilenetv2:16,deeplabv3plus:resnet50:16 --input_size=512 \
        --json_out=benchmark.json
"""

import json
import os
import statistics

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from absl import app, flags  # noqa: E402

FLAGS = flags.FLAGS
flags.DEFINE_string(
    "models",
    "deeplabv3plus:mobilenetv2:16,deeplabv3plus:resnet50:16",
    "Comma-separated model specs name[:backbone[:os[:key=value...]]].",
)
flags.DEFINE_string("input_size", "512", "Input size: 'S' or 'H,W'.")
flags.DEFINE_integer("num_classes", 21, "Number of classes.")
flags.DEFINE_integer("warmup", 3, "Untimed runs per model before timing.")
flags.DEFINE_integer("runs", 10, "Timed runs (batches of 1) per model.")
flags.DEFINE_bool("count_macs", True, "Count multiply-adds (slow for big models).")
flags.DEFINE_string("json_out", None, "Also write the table (and machine, settings) as JSON here.")
flags.DEFINE_enum(
    "fold_batch_norm",
    "on",
    ["off", "on", "both"],
    "Time the models with batch norm folded into the convs (`export.fold_batch_norm`, the "
    "path predict.py, evaluate.py and exported SavedModels run by default), as built (off), "
    "or both ways in the same rounds.",
)
flags.DEFINE_enum(
    "jit_compile",
    "off",
    ["off", "on", "both"],
    "Time the models XLA-compiled (`tf.function(jit_compile=True)`), not, or both.",
)
flags.DEFINE_enum(
    "precision",
    "float32",
    ["float32", "bfloat16", "both", "auto"],
    "Time our models in float32, rebuilt in bfloat16 (rows whose path starts 'bfloat16'), "
    "both in the same rounds, or auto (bfloat16 when this CPU runs bf16 natively).",
)
flags.DEFINE_integer(
    "peak_matmul_size",
    2048,
    "Side of the square fp32 matmul timed in the same rounds as the machine's peak (0: none).",
)
flags.DEFINE_bool(
    "keras_hub_peer",
    False,
    "Also time keras-hub's DeepLabV3+ on ResNet-50 (random init; needs `pip install keras-hub`), "
    "the peer this project is compared with, in the same interleaved rounds.",
)


def keras_hub_peer(height, width, num_classes):
    """keras-hub's DeepLabV3ImageSegmenter on its ResNet-50 v1 layout, random weights."""
    import keras
    import keras_hub

    resnet = keras_hub.models.ResNetBackbone(
        input_conv_filters=[64],
        input_conv_kernel_sizes=[7],
        stackwise_num_filters=[64, 128, 256, 512],
        stackwise_num_blocks=[3, 4, 6, 3],
        stackwise_num_strides=[1, 2, 2, 2],
        block_type="bottleneck_block",
        use_pre_activation=False,
        image_shape=(height, width, 3),
    )
    backbone = keras_hub.models.DeepLabV3Backbone(
        image_encoder=resnet,
        low_level_feature_key="P2",
        spatial_pyramid_pooling_key="P5",
        upsampling_size=8,
        dilation_rates=[6, 12, 18],
    )
    segmenter = keras_hub.models.DeepLabV3ImageSegmenter(backbone=backbone, num_classes=num_classes)
    inputs = keras.Input((height, width, 3))
    return keras.Model(inputs, segmenter(inputs), name="keras_hub_deeplabv3plus")


def describe(kwargs, spec):
    options = {
        **{f"backbone.{k}": v for k, v in kwargs["backbone_options"].items()},
        **kwargs["options"],
    }
    text = ", ".join(f"{k}={v}" for k, v in options.items())
    return spec.default_backbone if kwargs["backbone"] is None else kwargs["backbone"], text


def settings(choice):
    return {"off": [False], "on": [True], "both": [False, True]}[choice]


def precisions(choice):
    """The precisions to time for `--precision=choice` ("auto" resolved on this machine)."""
    if choice == "both":
        return ["float32", "bfloat16"]
    from keras_fusionseg.export.optimize import resolve_inference_precision

    return [resolve_inference_precision(choice)[0]]


def path_name(fold, jit, precision="float32"):
    parts = ["bfloat16"] * (precision == "bfloat16") + ["BN folded"] * fold + ["XLA"] * jit
    return " + ".join(parts) or "as built"


def variants(model, height, width, precision_choice="float32"):
    """(path, runner) per requested inference path of `model`; runners block on the result."""
    import tensorflow as tf

    from keras_fusionseg.export.optimize import fold_batch_norm, to_bfloat16

    image = tf.random.uniform((1, height, width, 3), 0, 255, seed=0)
    out = []
    for precision in precisions(precision_choice):
        base = model
        if precision == "bfloat16":
            try:
                base = to_bfloat16(model)
            except ValueError as error:  # e.g. the keras-hub peer: say so, go on
                print(f"{model.name}: no bfloat16 rows: {error}")
                continue
        for fold in settings(FLAGS.fold_batch_norm):
            graph = base
            if fold:
                try:
                    graph = fold_batch_norm(base)
                except Exception as error:  # e.g. a peer model that does not clone: go on
                    print(f"{model.name}: no BN-folded row, fold_batch_norm failed: {error!r}")
                    continue
            for jit in settings(FLAGS.jit_compile):
                function = tf.function(
                    lambda x, m=graph: m(x, training=False), autograph=False, jit_compile=jit
                )

                def run(function=function):
                    tf.nest.map_structure(lambda t: t.numpy(), function(image))

                for _ in range(FLAGS.warmup):
                    run()
                out.append((path_name(fold, jit, precision), precision, run))
    return out


def rows_from_times(entries, times, peak_gflops):
    """Table rows (dicts) from the interleaved times of each entry."""
    import numpy as np

    from keras_fusionseg.export.benchmark import achieved_gflops

    rows = []
    for entry, entry_times in zip(entries, times, strict=True):
        median = statistics.median(entry_times)
        # The 10th percentile: on a shared machine the fastest runs are the least disturbed.
        p10 = float(np.percentile(entry_times, 10))
        row = {
            **entry["row"],
            "images_per_second": 1.0 / median,
            "ms_per_image": median * 1e3,
            "ms_per_image_p10": p10 * 1e3,
        }
        if row["macs"] is not None:
            row["gflops"] = achieved_gflops(row["macs"], row["images_per_second"])
            row["peak_share"] = row["gflops"] / peak_gflops if peak_gflops else None
        else:
            row["gflops"] = row["peak_share"] = None
        row["times_s"] = entry_times
        rows.append(row)
    return rows


def main(argv):
    del argv
    import tensorflow as tf

    from keras_fusionseg import models
    from keras_fusionseg.export.benchmark import (
        cpu_model_name,
        interleaved_times,
        matmul_runner,
        onednn_setting,
    )
    from keras_fusionseg.utils import count_macs, count_parameters
    from keras_fusionseg.utils.cli_options import (
        parse_input_size,
        parse_model_spec,
        split_top_level,
    )
    from keras_fusionseg.utils.machine import describe_machine, machine_label
    from keras_fusionseg.utils.precision import native_bfloat16

    height, width = parse_input_size(FLAGS.input_size)
    specs = (
        [parse_model_spec(s) for s in split_top_level(FLAGS.models, ",")] if FLAGS.models else []
    )
    entries = []

    def add(model, row):
        row["params"] = count_parameters(model)["total"]
        row["macs"] = count_macs(model, (height, width)) if FLAGS.count_macs else None
        for path, precision, run in variants(model, height, width, FLAGS.precision):
            entries.append({"row": {**row, "path": path, "precision": precision}, "run": run})
        print(f"built {row['model']} on {row['backbone']}: {row['params']:,} params", flush=True)

    for kwargs in specs:
        spec = models.get_model_spec(kwargs["name"])
        output_stride = kwargs["output_stride"] or spec.default_output_stride
        model = models.build(
            kwargs["name"],
            num_classes=FLAGS.num_classes,
            input_shape=(height, width, 3),
            backbone=kwargs["backbone"],
            output_stride=output_stride,
            backbone_options=kwargs["backbone_options"],
            **kwargs["options"],
        )
        backbone, options = describe(kwargs, spec)
        add(
            model,
            {
                "model": kwargs["name"],
                "backbone": backbone,
                "output_stride": output_stride,
                "options": options,
            },
        )

    if FLAGS.keras_hub_peer:
        add(
            keras_hub_peer(height, width, FLAGS.num_classes),
            {
                "model": "keras-hub DeepLabV3+ (peer)",
                "backbone": "ResNet-50",
                "output_stride": 32,
                "options": "keras-hub layout",
            },
        )

    runners = [entry["run"] for entry in entries]
    peak_flops = None
    if FLAGS.peak_matmul_size:
        run, peak_flops = matmul_runner(FLAGS.peak_matmul_size)
        for _ in range(max(FLAGS.warmup, 1)):
            run()
        runners.append(run)
    times = interleaved_times(runners, FLAGS.runs)
    peak = None
    if peak_flops:
        matmul_times = times.pop()
        peak = {
            "matmul_size": FLAGS.peak_matmul_size,
            "gflops_median": peak_flops / statistics.median(matmul_times) / 1e9,
            "gflops_max": peak_flops / min(matmul_times) / 1e9,
            "times_s": matmul_times,
        }
    rows = rows_from_times(entries, times, peak and peak["gflops_median"])

    load = os.getloadavg() if hasattr(os, "getloadavg") else (float("nan"),) * 3
    machine = {
        "cpu_model": cpu_model_name(),
        "cpu": machine_label(describe_machine()),  # family/model, ISA, cores, oneDNN
        "cpu_count": os.cpu_count(),
        "tensorflow": tf.__version__,
        "onednn": onednn_setting(),
        "native_bfloat16": dict(zip(("native", "reason"), native_bfloat16(), strict=True)),
        "load_average_end": list(load),
    }
    print()
    print(
        f"Input {height}x{width}, {FLAGS.num_classes} classes, batch 1, median of {FLAGS.runs} "
        f"interleaved runs after {FLAGS.warmup} warm-up; CPU {machine['cpu']} "
        f"({machine['cpu_count']} CPU(s)), TF {tf.__version__}, TF_ENABLE_ONEDNN_OPTS="
        f"{machine['onednn']['env']} (oneDNN in effect: {machine['onednn']['effective']}), "
        "load average at the end "
        f"{load[0]:.2f}/{load[1]:.2f}/{load[2]:.2f}; native bfloat16: "
        f"{machine['native_bfloat16']['native']} ({machine['native_bfloat16']['reason']})."
    )
    if peak:
        print(
            f"Machine peak: {peak['matmul_size']}^2 fp32 matmul in the same rounds, median "
            f"{peak['gflops_median']:.1f} GFLOP/s (best {peak['gflops_max']:.1f})."
        )
    print()
    print(
        "| model | backbone | OS | options | path | params (M) | MACs (B) | images/s | ms/image "
        "| ms p10 | GFLOP/s | % of matmul peak |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|---|---|")
    for row in rows:
        macs = f"{row['macs'] / 1e9:.2f}" if row["macs"] is not None else "-"
        gflops = f"{row['gflops']:.1f}" if row["gflops"] is not None else "-"
        share = f"{100 * row['peak_share']:.1f}" if row["peak_share"] is not None else "-"
        print(
            f"| {row['model']} | {row['backbone']} | {row['output_stride']} | "
            f"{row['options'] or '-'} | {row['path']} | {row['params'] / 1e6:.2f} | {macs} | "
            f"{row['images_per_second']:.2f} | {row['ms_per_image']:.0f} | "
            f"{row['ms_per_image_p10']:.0f} | {gflops} | {share} |"
        )
    if FLAGS.json_out:
        result = {
            "machine": machine,
            "settings": {
                "input_size": [height, width],
                "num_classes": FLAGS.num_classes,
                "batch_size": 1,
                "warmup": FLAGS.warmup,
                "runs": FLAGS.runs,
                "fold_batch_norm": FLAGS.fold_batch_norm,
                "jit_compile": FLAGS.jit_compile,
                "precision": FLAGS.precision,
                "models": FLAGS.models,
                "keras_hub_peer": FLAGS.keras_hub_peer,
            },
            "peak": peak,
            "rows": rows,
        }
        with open(FLAGS.json_out, "w") as f:
            json.dump(result, f, indent=2)
        print(f"\nwrote {FLAGS.json_out}")


if __name__ == "__main__":
    app.run(main)
