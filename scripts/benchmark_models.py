"""Parameters, multiply-adds and inference speed of several models, measured in one run.

Each model spec is `name[:backbone[:output_stride[:key=value[:key=value...]]]]`; option keys
starting with `backbone.` go to the backbone (e.g. `backbone.alpha=0.35`). Specs are separated
by commas outside brackets. Models are timed in interleaved rounds (one batch of 1 per model
per round, after a warm-up), so that load changes on a shared machine hit every model alike;
the table reports the median images/s.

    python scripts/benchmark_models.py \
        --models=deeplabv3plus:mobilenetv2:16,deeplabv3plus:resnet50:16 --input_size=512
"""

import os
import platform
import statistics
import time

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


def main(argv):
    del argv
    import tensorflow as tf

    from keras_fusionseg import models
    from keras_fusionseg.utils import count_macs, count_parameters
    from keras_fusionseg.utils.cli_options import (
        parse_input_size,
        parse_model_spec,
        split_top_level,
    )

    height, width = parse_input_size(FLAGS.input_size)
    specs = [parse_model_spec(s) for s in split_top_level(FLAGS.models, ",")]
    entries = []
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
        params = count_parameters(model)["total"]
        macs = count_macs(model, (height, width)) if FLAGS.count_macs else None
        image = tf.random.uniform((1, height, width, 3), 0, 255, seed=0)
        function = tf.function(lambda x, m=model: m(x, training=False), autograph=False)
        for _ in range(FLAGS.warmup):
            tf.nest.map_structure(lambda t: t.numpy(), function(image))
        entries.append(
            {
                "row": (kwargs["name"], backbone, output_stride, options, params, macs),
                "function": function,
                "image": image,
                "times": [],
            }
        )
        print(
            f"built {kwargs['name']} on {backbone} OS{output_stride}: {params:,} params", flush=True
        )

    if FLAGS.keras_hub_peer:
        model = keras_hub_peer(height, width, FLAGS.num_classes)
        image = tf.random.uniform((1, height, width, 3), 0, 255, seed=0)
        function = tf.function(lambda x, m=model: m(x, training=False), autograph=False)
        for _ in range(FLAGS.warmup):
            function(image).numpy()
        row = ("keras-hub DeepLabV3+ (peer)", "ResNet-50", 32, "keras-hub layout")
        params = count_parameters(model)["total"]
        macs = count_macs(model, (height, width)) if FLAGS.count_macs else None
        entries.append(
            {"row": (*row, params, macs), "function": function, "image": image, "times": []}
        )

    # Interleaved rounds: every model sees the same machine conditions.
    for _ in range(FLAGS.runs):
        for entry in entries:
            start = time.perf_counter()
            tf.nest.map_structure(lambda t: t.numpy(), entry["function"](entry["image"]))
            entry["times"].append(time.perf_counter() - start)

    load = os.getloadavg() if hasattr(os, "getloadavg") else ("?",) * 3
    print()
    print(
        f"Input {height}x{width}, {FLAGS.num_classes} classes, batch 1, median of {FLAGS.runs} runs "
        f"after {FLAGS.warmup} warm-up; TF {tf.__version__}, {os.cpu_count()} CPU(s) "
        f"({platform.processor() or platform.machine()}), load average at the end "
        f"{load[0]:.2f}/{load[1]:.2f}/{load[2]:.2f}."
    )
    print()
    print("| model | backbone | OS | options | params (M) | MACs (B) | images/s | ms/image |")
    print("|---|---|---|---|---|---|---|---|")
    for entry in entries:
        name, backbone, output_stride, options, params, macs = entry["row"]
        median = statistics.median(entry["times"])
        macs_text = f"{macs / 1e9:.2f}" if macs is not None else "-"
        print(
            f"| {name} | {backbone} | {output_stride} | {options or '-'} | {params / 1e6:.2f} | "
            f"{macs_text} | {1 / median:.2f} | {median * 1e3:.0f} |"
        )


if __name__ == "__main__":
    app.run(main)
