r"""Evaluates a trained checkpoint on the config's validation split.

    python scripts/evaluate.py --workdir=runs/quickstart                  # whole images
    python scripts/evaluate.py --workdir=runs/quickstart --config.eval.mode=multiscale
    python scripts/evaluate.py --workdir=runs/camvid --config=configs/deeplabv3plus_mobilenetv2_camvid.py \
        --config.eval.mode=sliding --config.eval.trimap_widths="(2,5,10)"

    python scripts/evaluate.py --preset=deeplabv3plus_mobilenetv2_camvid --workdir=runs/preset

Writes metrics.json, confusion_matrix.csv and confusion_matrix.png to
<workdir>/eval_<mode>/ (or --output_dir). With --preset (instead of --checkpoint) and no
--config, the preset's own training config says which data and eval mode to use;
`--config.<field>=...` overrides still apply to it.

Evaluation runs image by image on one device, in the dtype policy the checkpoint was saved
with (or in bfloat16 with --precision): train.py's --strategy and --mixed_precision have no
counterpart here.
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
_WORKDIR = flags.DEFINE_string("workdir", None, "Training folder (default runs/<config name>).")
_CHECKPOINT = flags.DEFINE_string(
    "checkpoint", None, "A .keras model (default <workdir>/checkpoints/final.keras)."
)
_PRESET = flags.DEFINE_string(
    "preset", None, "A preset name (keras_fusionseg.models.list_presets()) instead of --checkpoint."
)
flags.mark_flags_as_mutual_exclusive(["checkpoint", "preset"])
_RECALIBRATE = flags.DEFINE_integer(
    "bn_recalibration_batches",
    0,
    "> 0: re-estimate batch-norm statistics on this many training batches before evaluating "
    "(see keras_fusionseg.training.batch_norm).",
)
_OUTPUT_DIR = flags.DEFINE_string("output_dir", None, "Default <workdir>/eval_<mode>.")
_PRECISION = flags.DEFINE_enum(
    "precision",
    "float32",
    ["float32", "bfloat16", "auto"],
    "bfloat16 evaluates the model rebuilt under the mixed_bfloat16 policy (float32 weights and "
    "logits; keras_fusionseg.export.optimize.to_bfloat16), after any BN recalibration; auto = "
    "bfloat16 when this CPU runs bf16 natively (keras_fusionseg.utils.precision."
    "native_bfloat16), else float32. metrics.json records the precision used.",
)

_FOLD_BATCH_NORM = flags.DEFINE_bool(
    "fold_batch_norm",
    True,
    "Evaluate the model with batch norms folded into their convs, as predict.py and the "
    "exported SavedModel run it (exact in inference to float rounding; after any BN "
    "recalibration). metrics.json records it.",
)


def _check_num_classes(model, info, checkpoint, dataset):
    """A checkpoint scored against another class count gives a meaningless mIoU: refuse it."""
    shape = model.output_shape
    if isinstance(shape, dict):
        shape = shape.get("logits", next(iter(shape.values())))
    predicted, expected = shape[-1], getattr(info, "num_classes", None)
    if predicted is not None and expected is not None and predicted != expected:
        raise ValueError(
            f"Checkpoint {checkpoint!r} predicts {predicted} classes but the config's dataset "
            f"{dataset!r} has {expected}; evaluate with the config the model was trained with."
        )


def _with_overrides(config):
    """`config` with the command line's `--config.<field>=value` overrides applied."""
    for flag_name in flags.FLAGS:
        if flag_name.startswith("config.") and flags.FLAGS[flag_name].present:
            *parents, field = flag_name.split(".")[1:]
            target = config
            for key in parents:
                target = target[key]
            target[field] = flags.FLAGS[flag_name].value
    return config


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
    import keras

    import keras_fusionseg  # noqa: F401  (registers custom layers for loading)
    from keras_fusionseg.evaluation import evaluator
    from keras_fusionseg.export.optimize import resolve_inference_precision, with_precision
    from keras_fusionseg.export.saved_model import fold_batch_norm_if_functional
    from keras_fusionseg.models import presets
    from keras_fusionseg.training import trainer
    from keras_fusionseg.training.config import validate_config

    config = _CONFIG.value
    if _PRESET.value:
        if not flags.FLAGS["config"].present:
            metadata = presets.load_preset_metadata(_PRESET.value)
            config = _with_overrides(presets.training_config(metadata))
        name = os.path.basename(os.path.normpath(_PRESET.value))
    else:
        path, _, variant = flags.FLAGS["config"].config_filename.partition(":")
        name = "_".join(
            [os.path.splitext(os.path.basename(path))[0], *re.findall(r"[\w.]+", variant)]
        )
    workdir = _WORKDIR.value or os.path.join("runs", name)
    output_dir = _OUTPUT_DIR.value or os.path.join(workdir, f"eval_{config.eval.mode}")
    source = f"preset {_PRESET.value!r}" if _PRESET.value else None
    validate_config(config, output_dir, source=source or flags.FLAGS["config"].config_filename)
    checkpoint = _CHECKPOINT.value or os.path.join(workdir, "checkpoints", "final.keras")
    if _PRESET.value:
        model, _ = presets.load_checkpoint_or_preset(preset=_PRESET.value)
        checkpoint = f"preset:{_PRESET.value}"
    elif not os.path.isfile(checkpoint):
        raise FileNotFoundError(
            f"Checkpoint {checkpoint!r} does not exist; train first or pass --checkpoint."
        )
    else:
        model = keras.models.load_model(checkpoint, compile=False)
    _check_num_classes(model, trainer.dataset_info(config), checkpoint, config.data.name)
    if _RECALIBRATE.value:
        from keras_fusionseg.training.batch_norm import recalibrate_batch_norm

        images = trainer.training_dataset(config, trainer.dataset_info(config), config.seed)
        recalibrate_batch_norm(model, images, _RECALIBRATE.value)
    precision, reason = resolve_inference_precision(_PRECISION.value)
    model = with_precision(model, precision)  # after recalibration: it copies the weights
    if _FOLD_BATCH_NORM.value:
        model = fold_batch_norm_if_functional(model)
    results = trainer.evaluate_config(config, model)
    evaluator.write_reports(
        results,
        output_dir,
        {
            "checkpoint": checkpoint,
            "precision": precision,
            "precision_reason": reason,
            "fold_batch_norm": _FOLD_BATCH_NORM.value,
        },
    )
    print(
        f"mIoU {results['mean_iou']:.4f}, pixel accuracy {results['pixel_accuracy']:.4f} on "
        f"{results['num_images']} images ({results['eval_mode']}, {precision}). Reports in "
        f"{output_dir}/"
    )
    for width, scores in results.get("trimap", {}).items():
        band = results["trimap_band"]
        print(f"  trimap band ({band}) {width} px: mIoU {scores['mean_iou']:.4f}")


if __name__ == "__main__":
    app.run(main)
