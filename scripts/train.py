r"""Trains a segmentation model from a config file, then evaluates it.

    python scripts/train.py                       # quick start: tiny DeepLabv3+ on synthetic_shapes
    python scripts/train.py --config=configs/deeplabv3plus_mobilenetv2_camvid.py \
        --workdir=runs/camvid --config.train.max_steps=5
    python scripts/train.py --config=configs/camvid.py:model=pspnet   # workdir runs/camvid_model_pspnet

Outputs in --workdir (default runs/<config file name>): checkpoints/, logs/ (TensorBoard),
metrics.json, confusion_matrix.csv/.png. Re-running a killed run with the same command
resumes from its last backup.
"""

import os
import re
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from absl import app, flags  # noqa: E402
from ml_collections import config_flags  # noqa: E402

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# Loading a config file imports the library and TensorFlow: --help does without the default.
_HELP = ("help", "helpshort", "helpfull", "helpxml", "?")
_ASKS_HELP = any(arg[:1] == "-" and arg.lstrip("-") in _HELP for arg in sys.argv[1:])
_CONFIG = config_flags.DEFINE_config_file(
    "config",
    None if _ASKS_HELP else os.path.join(REPO, "configs", "quickstart.py"),
    "Config file: configs/<name>.py or configs/<name>.py:<variant> (default configs/quickstart.py).",
)
_WORKDIR = flags.DEFINE_string("workdir", None, "Output folder (default runs/<config name>).")
_STRATEGY = flags.DEFINE_enum(
    "strategy",
    "auto",
    ["auto", "one_device", "mirrored", "multi_worker", "tpu"],
    "tf.distribute strategy.",
)
_MIXED_PRECISION = flags.DEFINE_enum(
    "mixed_precision",
    None,
    ["", "float32", "mixed_float16", "mixed_bfloat16"],
    "Overrides config.mixed_precision.",
)
_CPU_DEVICES = flags.DEFINE_integer(
    "cpu_devices", 0, "Split the CPU into this many logical devices (to try --strategy=mirrored)."
)


def config_name():
    """camvid for configs/camvid.py; camvid_model_pspnet for configs/camvid.py:model=pspnet."""
    path, _, variant = flags.FLAGS["config"].config_filename.partition(":")
    return "_".join([os.path.splitext(os.path.basename(path))[0], *re.findall(r"[\w.]+", variant)])


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
    if _CPU_DEVICES.value > 1:
        import tensorflow as tf

        cpu = tf.config.list_physical_devices("CPU")[0]
        tf.config.set_logical_device_configuration(
            cpu, [tf.config.LogicalDeviceConfiguration()] * _CPU_DEVICES.value
        )
    from keras_fusionseg.training import trainer

    workdir = _WORKDIR.value or os.path.join("runs", config_name())
    results = trainer.train(
        _CONFIG.value,
        workdir,
        strategy=_STRATEGY.value,
        mixed_precision=_MIXED_PRECISION.value,
        config_source=flags.FLAGS["config"].config_filename,
    )
    if "mean_iou" in results:
        print(
            f"Validation mIoU {results['mean_iou']:.4f}, pixel accuracy "
            f"{results['pixel_accuracy']:.4f} on {results['num_images']} images "
            f"({results['train_steps']} steps, {results['train_seconds']} s). "
            f"Outputs in {workdir}/"
        )
        print("Where to look:", *trainer.where_to_look(workdir), sep="\n")


if __name__ == "__main__":
    app.run(main)
