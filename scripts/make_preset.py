r"""Packages a trained checkpoint as a preset: `keras_fusionseg/presets/<name>/`.

    python scripts/make_preset.py --checkpoint=runs/camvid/checkpoints/final.keras \
        --workdir=runs/camvid --name=deeplabv3plus_mobilenetv2_camvid \
        --config_file=configs/deeplabv3plus_mobilenetv2_camvid.py

Writes `config.json` (the inference model, auxiliary outputs dropped), `model.weights.npz`
(float32 weights stored as float16 unless --storage_dtype=float32) and `metadata.json`
(see `keras_fusionseg.models.presets`): the dataset and its licence, class names, palette,
ignore label, the workdir's `config.json` and `metrics.json` (and the config file's text with
--config_file), training minutes and steps, this machine's CPU (`lscpu`), and on
--checksum_image (by default a CamVid val image from ../shared/data) the class-id checksum of
the stored model and how far its logits are from the checkpoint's. The preset is written
under a temporary name, loaded back with `from_preset` and only then renamed; an existing
preset is never replaced without --overwrite.
"""

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from absl import app, flags  # noqa: E402

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DATA_ROOT = os.path.join(os.path.dirname(REPO), "shared", "data")
CHECKSUM_IMAGE = os.path.join("camvid", "images", "val", "0016E5_07959.png")

_CHECKPOINT = flags.DEFINE_string("checkpoint", None, "The trained .keras file.", required=True)
_WORKDIR = flags.DEFINE_string(
    "workdir", None, "Its training workdir (config.json, metrics.json).", required=True
)
_NAME = flags.DEFINE_string(
    "name", None, "Preset name, <model>_<backbone>_<dataset> (lowercase, digits, _).", required=True
)
_DESCRIPTION = flags.DEFINE_string("description", None, "One line (default: from the config).")
_OUTPUT_ROOT = flags.DEFINE_string(
    "output_root",
    None,
    "Folder of presets (default: $KERAS_FUSIONSEG_PRESETS_DIR, else keras_fusionseg/presets).",
)
_CONFIG_FILE = flags.DEFINE_string(
    "config_file", None, "The configs/*.py file that trained it (its text is recorded too)."
)
_DATA_ROOT = flags.DEFINE_string(
    "data_root", DATA_ROOT, "Folder the checksum image's recorded path is relative to."
)
_CHECKSUM_IMAGE = flags.DEFINE_string(
    "checksum_image",
    CHECKSUM_IMAGE,
    "Image (relative to --data_root, or absolute) for the class-id checksum and the "
    "float16-vs-checkpoint comparison.",
)
_DATASET_LICENSE = flags.DEFINE_string(
    "dataset_license", None, "Licence of the training data (default: known for camvid)."
)
_TRAIN_MINUTES = flags.DEFINE_float(
    "train_minutes", None, "Training minutes (default: metrics.json train_seconds / 60)."
)
_TRAIN_STEPS = flags.DEFINE_integer(
    "train_steps", None, "Training steps (default: metrics.json train_steps)."
)
_STORAGE_DTYPE = flags.DEFINE_enum(
    "storage_dtype", "float16", ["float16", "float32"], "dtype of the stored weights."
)
_OVERWRITE = flags.DEFINE_bool("overwrite", False, "Replace an existing preset of that name.")
_EVALUATE = flags.DEFINE_bool(
    "evaluate",
    False,
    "Also score the stored (float16) model on the training config's val split and record "
    "the change of val mIoU against metrics.json (run from the directory training ran in, "
    "so the config's data_dir resolves).",
)


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
    from keras_fusionseg.models import presets

    target, metadata = presets.save_preset(
        _CHECKPOINT.value,
        _WORKDIR.value,
        _NAME.value,
        output_root=_OUTPUT_ROOT.value,
        description=_DESCRIPTION.value,
        config_file=_CONFIG_FILE.value,
        data_root=_DATA_ROOT.value,
        checksum_image=_CHECKSUM_IMAGE.value,
        dataset_license=_DATASET_LICENSE.value,
        train_minutes=_TRAIN_MINUTES.value,
        train_steps=_TRAIN_STEPS.value,
        storage_dtype=_STORAGE_DTYPE.value,
        overwrite=_OVERWRITE.value,
        evaluate=_EVALUATE.value,
    )
    check = metadata["weights"]["storage_check"]
    print(
        f"Preset {metadata['name']!r} -> {target} ({metadata['weights']['size_bytes'] / 1e6:.2f}"
        f" MB {metadata['weights']['storage_dtype']} weights). On {check['image']}: max |logits"
        f" - checkpoint logits| {check['max_abs_logits_diff']:.3g}, class ids agree on "
        f"{100 * check['class_id_agreement']:.3f}% of pixels; checksum "
        f"{metadata['checksum']['class_ids_sha256'][:16]}..."
    )
    if "val_mean_iou" in check:
        change = check.get("val_mean_iou_change_points")
        change = "" if change is None else f" ({change:+.3f} points against metrics.json)"
        print(f"Stored model: val mIoU {check['val_mean_iou']:.4f}{change}.")


if __name__ == "__main__":
    app.run(main)
