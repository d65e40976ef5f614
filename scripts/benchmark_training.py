r"""Measures training throughput (images/s) of a config's model: the compiled train step alone.

Builds and compiles the model exactly as `scripts/train.py` does (optimizer, losses from the
model's loss_spec, class weights, mIoU metrics) and times `model.fit` steps on one random
batch of the config's crop size and batch size, so the number is the step's cost without
the input pipeline (measure that with `scripts/benchmark_input.py`). Settings are compared
in one run, interleaved, so load changes hit every setting alike. Example:

    python scripts/benchmark_training.py --config=configs/camvid.py \
        --settings=float32,xla,mixed_bfloat16 --steps=10

Settings (comma separated): `float32` (the config as `scripts/train.py` trains it, default
strategy), `xla` (`jit_compile=True` in compile), `mixed_bfloat16`, `mixed_bfloat16+xla`,
`one_device` (float32 under `OneDeviceStrategy`, `--strategy=one_device`).
"""

import json
import os
import sys
import tempfile
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from absl import app, flags  # noqa: E402
from ml_collections import config_flags  # noqa: E402

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
_HELP = ("help", "helpshort", "helpfull", "helpxml", "?")
_ASKS_HELP = any(arg[:1] == "-" and arg.lstrip("-") in _HELP for arg in sys.argv[1:])
_CONFIG = config_flags.DEFINE_config_file(
    "config",
    None if _ASKS_HELP else os.path.join(REPO, "configs", "camvid.py"),
    "Config file (configs/<name>.py[:<variant>]); default configs/camvid.py.",
)
_SETTINGS = flags.DEFINE_list(
    "settings", ["float32", "xla"], "Settings to compare: float32, xla, mixed_bfloat16, ..."
)
_STEPS = flags.DEFINE_integer("steps", 10, "Timed steps per setting and round.")
_WARMUP = flags.DEFINE_integer("warmup", 2, "Untimed steps first (tracing, XLA compilation).")
_ROUNDS_HELP = "Interleaved rounds; the best round's median step is reported."
_ROUNDS = flags.DEFINE_integer("rounds", 2, _ROUNDS_HELP)
_JSON_OUT = flags.DEFINE_string("json_out", None, "Also write the results as JSON here.")
_INPUT_BATCHES = flags.DEFINE_integer(
    "input_batches",
    0,
    "Also time this many batches of the config's own training pipeline (decode, augment, "
    "batch; the first, uncached epoch) in the same process, against the step's consumption.",
)

# Setting -> (dtype policy, jit_compile, strategy name for `strategies.make_strategy`).
SETTINGS = {
    "float32": ("float32", False, "auto"),
    "xla": ("float32", True, "auto"),
    "mixed_bfloat16": ("mixed_bfloat16", False, "auto"),
    "mixed_bfloat16+xla": ("mixed_bfloat16", True, "auto"),
    "one_device": ("float32", False, "one_device"),  # `--strategy=one_device` of train.py
}


def check_settings(names):
    unknown = [name for name in names if name not in SETTINGS]
    if unknown or not names:
        raise app.UsageError(f"--settings: unknown {unknown}; choose from {sorted(SETTINGS)}.")


def compiled_model(config, precision, jit_compile, workdir, strategy="auto"):
    """The config's model compiled as `trainer.build_compiled_model` does, under `precision`."""
    from keras_fusionseg.training import trainer

    config = config.copy_and_resolve_references()
    config.mixed_precision = "" if precision == "float32" else precision
    config.train.jit_compile = jit_compile
    run = trainer.prepare_run(config, workdir, strategy=strategy)
    with trainer.dtype_policy(precision):
        model = trainer.build_compiled_model(run)
    return model, run.info.num_classes


def random_batch(config, model, num_classes):
    """One (images, labels) batch of the config's crop and batch size, labels per output as
    the training dataset gives them (`trainer.labels_for_outputs`)."""
    import numpy as np

    from keras_fusionseg.training import trainer

    height, width = config.data.crop_size
    rng = np.random.default_rng(0)
    images = rng.uniform(0, 255, (config.data.batch_size, height, width, 3)).astype("float32")
    labels = rng.integers(0, num_classes, (config.data.batch_size, height, width, 1))
    labels = labels.astype("int32")
    relabel = trainer.labels_for_outputs(model.loss_spec)
    return (images, labels) if relabel is None else relabel(images, labels)


def time_steps(model, batch, steps):
    """Median seconds of `steps` train steps (one `fit` call on a repeated batch), each step
    timed by a callback, so tracing and per-`fit` set-up are left out."""
    import keras
    import numpy as np
    import tensorflow as tf

    ends = []

    class StepTimer(keras.callbacks.Callback):
        def on_train_batch_end(self, batch, logs=None):
            ends.append(time.perf_counter())

    dataset = tf.data.Dataset.from_tensors(batch).repeat()
    model.fit(dataset, steps_per_epoch=steps + 1, epochs=1, verbose=0, callbacks=[StepTimer()])
    return float(np.median(np.diff(ends)))


def input_images_per_second(config, batches, warmup=3):
    """Images/s of `trainer.training_dataset` (the config's data, augmentation and batching)."""
    from keras_fusionseg.training import trainer

    iterator = iter(trainer.training_dataset(config, trainer.dataset_info(config), config.seed))
    for _ in range(warmup):
        next(iterator)
    start = time.perf_counter()
    for _ in range(batches):
        next(iterator)
    return batches * config.data.batch_size / (time.perf_counter() - start)


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
    check_settings(_SETTINGS.value)
    import tensorflow as tf

    config = _CONFIG.value
    batch_size = config.data.batch_size
    models = {}
    with tempfile.TemporaryDirectory() as workdir:
        for name in _SETTINGS.value:
            precision, jit, strategy = SETTINGS[name]
            model, num_classes = compiled_model(config, precision, jit, workdir, strategy)
            batch = random_batch(config, model, num_classes)
            time_steps(model, batch, max(_WARMUP.value, 1))
            models[name] = (model, batch)
    best = {name: float("inf") for name in models}
    for _ in range(_ROUNDS.value):
        for name, (model, batch) in models.items():
            best[name] = min(best[name], time_steps(model, batch, _STEPS.value))
    reference = best[_SETTINGS.value[0]]
    rows = []
    print(
        f"{config.model.name} on {config.model.backbone}, crop {tuple(config.data.crop_size)}, "
        f"batch {batch_size}, {os.cpu_count()} CPUs, TF {tf.__version__}, oneDNN "
        f"{os.environ.get('TF_ENABLE_ONEDNN_OPTS', 'default')}, load {os.getloadavg()[0]:.1f}"
    )
    print(f"{'setting':<22}{'s/step':>9}{'images/s':>10}{'vs first':>10}")
    for name, seconds in best.items():
        rows.append(
            {
                "setting": name,
                "seconds_per_step": round(seconds, 4),
                "images_per_second": round(batch_size / seconds, 3),
                "speedup_vs_first": round(reference / seconds, 3),
            }
        )
        print(f"{name:<22}{seconds:>9.3f}{batch_size / seconds:>10.2f}{reference / seconds:>9.2f}x")
    result = {"model": config.model.name, "rows": rows}
    if _INPUT_BATCHES.value:
        rate = input_images_per_second(config, _INPUT_BATCHES.value)
        consumed = batch_size / reference
        result["input_pipeline"] = {
            "images_per_second": round(rate, 2),
            "ratio_to_first_setting": round(rate / consumed, 2),
        }
        print(
            f"input pipeline: {rate:.1f} images/s ({_INPUT_BATCHES.value} batches), "
            f"{rate / consumed:.1f}x what the {_SETTINGS.value[0]} step consumes"
        )
    if _JSON_OUT.value:
        with open(_JSON_OUT.value, "w") as f:
            json.dump(result, f, indent=2)


if __name__ == "__main__":
    app.run(main)
