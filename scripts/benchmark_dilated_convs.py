"""Speed of the dilated-conv implementations, with oneDNN off and on, in one run.

Candidates (forward, and forward + gradients, median ms over interleaved rounds):
- `portable`: this library (`layers/atrous.py`): native dense forward with a custom
  gradient of forward convs; shift-and-add depthwise. Runs on every device.
- `native`: `Conv2D` / `DepthwiseConv2dNative` with `dilations` and TF's own gradients.
  Exists only where the kernels do (oneDNN CPU builds, GPUs); "n/a" elsewhere.
- `space_to_batch`: `tf.nn.convolution` / `tf.nn.depthwise_conv2d` (stock Keras layers).
  Runs everywhere, but Grappler mis-folds its run-time paddings on partly known shapes
  (tests/test_layers_common.py), so the library cannot use it.
Also one training step of DeepLabv3+ MobileNetV2 OS16 (separable ASPP/decoder) and
ResNet-50 OS8 per implementation (`space_to_batch` by swapping the layers' ops).

Each oneDNN setting runs in its own subprocess (TensorFlow reads the flag at import):

    python scripts/benchmark_dilated_convs.py            # both settings, one table
"""

import json
import os
import statistics
import subprocess
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from absl import app, flags  # noqa: E402

FLAGS = flags.FLAGS
flags.DEFINE_integer("rounds", 7, "Timed interleaved rounds per case.")
flags.DEFINE_bool("models", True, "Also time whole-model training steps.")
flags.DEFINE_string("onednn", "0,1", "TF_ENABLE_ONEDNN_OPTS values to run, comma-separated.")
flags.DEFINE_bool("child", False, "Internal: measure in this process and print JSON.")

# name, input NHWC, output channels (None: depthwise), rate
LAYER_CASES = [
    ("R50 OS8 last stage 3x3 512->512 r4 @64", (1, 64, 64, 512), 512, 4),
    ("ASPP 3x3 2048->256 r12 @32", (1, 32, 32, 2048), 256, 12),
    ("MobileNetV2 OS16 depthwise 960 r2 @32", (4, 32, 32, 960), None, 2),
    ("Xception exit depthwise 1536 r2 @32", (2, 32, 32, 1536), None, 2),
    ("ASPP separable depthwise 2048 r18 @32", (1, 32, 32, 2048), None, 18),
]
MODEL_CASES = [
    ("deeplabv3plus mobilenetv2 OS16 sep, 4x256x352", "deeplabv3plus", "mobilenetv2", 16, 4),
    ("deeplabv3plus resnet50 OS8, 2x256x256", "deeplabv3plus", "resnet50", 8, 2),
]


def _ops(name):
    import tensorflow as tf

    from keras_fusionseg.layers import atrous

    def native(x, k, rate, depthwise):
        if depthwise:
            return tf.raw_ops.DepthwiseConv2dNative(
                input=x,
                filter=k,
                strides=[1, 1, 1, 1],
                padding="SAME",
                dilations=[1, rate, rate, 1],
            )
        return tf.nn.conv2d(x, k, 1, "SAME", dilations=rate)

    def space_to_batch(x, k, rate, depthwise):
        if depthwise:
            return tf.nn.depthwise_conv2d(x, k, [1, 1, 1, 1], "SAME", dilations=[rate, rate])
        return tf.nn.convolution(x, k, padding="SAME", dilations=rate)

    def portable(x, k, rate, depthwise):
        if depthwise:
            return atrous.dilated_depthwise_conv2d(x, k, rate)
        return atrous.dilated_conv2d(x, k, rate)

    return {"portable": portable, "native": native, "space_to_batch": space_to_batch}[name]


def _median_ms(fn, rounds):
    fn()
    times = []
    for _ in range(rounds):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times) * 1000


def _time_layer(op, x, k, rate, depthwise, rounds):
    import tensorflow as tf

    spec = [tf.TensorSpec([None, None, None, x.shape[-1]])]
    forward = tf.function(lambda a: op(a, k, rate, depthwise), input_signature=spec)

    @tf.function(input_signature=spec)
    def both(a):
        with tf.GradientTape() as tape:
            tape.watch(a)
            loss = tf.reduce_sum(tf.square(op(a, k, rate, depthwise)))
        return tape.gradient(loss, [a, k])

    return {
        "forward_ms": _median_ms(lambda: forward(x).numpy(), rounds),
        "train_ms": _median_ms(lambda: both(x)[0].numpy(), rounds),
    }


def _layer_rows(rounds):
    import numpy as np
    import tensorflow as tf

    rows = []
    rng = np.random.default_rng(0)
    for case, shape, out_channels, rate in LAYER_CASES:
        x = tf.constant(rng.normal(size=shape).astype("float32"))
        kernel_shape = (3, 3, shape[-1], out_channels or 1)
        k = tf.Variable(0.05 * rng.normal(size=kernel_shape).astype("float32"))
        for name in ("portable", "native", "space_to_batch"):
            row = {"case": case, "impl": name}
            try:
                row.update(_time_layer(_ops(name), x, k, rate, out_channels is None, rounds))
            except tf.errors.OpError as error:
                row["error"] = str(error).strip().splitlines()[0][:80]
            rows.append(row)
    return rows


def _train_step(model, images, labels):
    import keras
    import tensorflow as tf

    optimizer = keras.optimizers.SGD(0.01)
    loss_fn = keras.losses.SparseCategoricalCrossentropy(from_logits=True)

    @tf.function
    def step():
        with tf.GradientTape() as tape:
            loss = loss_fn(labels, model(images, training=True))
        grads = tape.gradient(loss, model.trainable_variables)
        optimizer.apply_gradients(zip(grads, model.trainable_variables, strict=True))
        return loss

    return step


def _model_rows(rounds):
    import numpy as np
    import tensorflow as tf

    from keras_fusionseg import models
    from keras_fusionseg.layers import atrous

    rows = []
    for case, name, backbone, output_stride, batch in MODEL_CASES:
        height, width = (256, 352) if "352" in case else (256, 256)
        options = {"separable": True} if backbone == "mobilenetv2" else {}
        model = models.build(
            name, num_classes=11, backbone=backbone, output_stride=output_stride, **options
        )
        images = tf.constant(
            np.random.default_rng(0).uniform(0, 255, (batch, height, width, 3)), tf.float32
        )
        labels = tf.zeros((batch, height, width), tf.int32)
        for impl in ("portable", "native", "space_to_batch"):
            row = {"case": case, "impl": impl}
            try:
                with _implementation(impl, atrous):
                    step = _train_step(model, images, labels)
                    row["train_ms"] = _median_ms(lambda s=step: s().numpy(), max(3, rounds // 2))
            except tf.errors.OpError as error:
                row["error"] = str(error).strip().splitlines()[0][:80]
            rows.append(row)
    return rows


class _implementation:
    """Swaps what the library's dilated layers trace to, for one benchmark."""

    def __init__(self, impl, atrous):
        self.impl, self.atrous = impl, atrous

    def __enter__(self):
        self.saved = (self.atrous.dilated_conv2d, self.atrous.dilated_depthwise_conv2d)
        self.native = None
        if self.impl == "native":
            self.native = self.atrous.native_dilated_convs()
            self.native.__enter__()
        elif self.impl == "space_to_batch":
            op = _ops("space_to_batch")
            self.atrous.dilated_conv2d = lambda x, k, rate, padding="same": op(x, k, rate, False)
            self.atrous.dilated_depthwise_conv2d = lambda x, k, rate, padding="same": op(
                x, k, rate, True
            )

    def __exit__(self, *exc):
        self.atrous.dilated_conv2d, self.atrous.dilated_depthwise_conv2d = self.saved
        if self.native is not None:
            self.native.__exit__(*exc)


def _child():
    rows = _layer_rows(FLAGS.rounds)
    if FLAGS.models:
        rows += _model_rows(FLAGS.rounds)
    print("JSON" + json.dumps(rows))


def _cell(row, key):
    if "error" in row:
        return "n/a"
    return f"{row[key]:.1f}" if key in row else "-"


def main(argv):
    del argv
    if FLAGS.child:
        _child()
        return
    results = {}
    for setting in FLAGS.onednn.split(","):
        env = {**os.environ, "TF_ENABLE_ONEDNN_OPTS": setting}
        command = [
            sys.executable,
            __file__,
            "--child",
            f"--rounds={FLAGS.rounds}",
            f"--models={FLAGS.models}",
        ]
        out = subprocess.run(command, env=env, capture_output=True, text=True, check=True).stdout
        line = next(line for line in out.splitlines() if line.startswith("JSON"))
        results[setting] = json.loads(line[4:])
    from keras_fusionseg.utils.machine import describe_machine, machine_label

    cpu = machine_label(describe_machine(onednn=False))
    print(f"CPU: {cpu}, {os.cpu_count()} cores; load average {os.getloadavg()[0]:.1f}")
    settings = list(results)
    header = ["case", "impl"] + [
        f"{what} ms (oneDNN {s})" for s in settings for what in ("forward", "train")
    ]
    print("| " + " | ".join(header) + " |")
    print("|" + "---|" * len(header))
    first = results[settings[0]]
    for index, row in enumerate(first):
        cells = [row["case"], row["impl"]]
        for s in settings:
            other = results[s][index]
            cells += [_cell(other, "forward_ms"), _cell(other, "train_ms")]
        print("| " + " | ".join(cells) + " |")


if __name__ == "__main__":
    app.run(main)
