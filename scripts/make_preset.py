"""Packages a trained checkpoint as a preset: `keras_fusionseg/presets/<name>/`.

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

import json
import os
import shutil
import subprocess
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

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


def machine():
    """CPU model name and core counts of this machine (`lscpu`, else /proc/cpuinfo)."""
    fields = {}
    try:
        text = subprocess.run(
            ["lscpu"], capture_output=True, text=True, check=True, env={"LC_ALL": "C"}
        ).stdout
        for line in text.splitlines():
            key, _, value = line.partition(":")
            fields[key.strip()] = value.strip()
    except (OSError, subprocess.CalledProcessError):
        pass
    cpu = fields.get("Model name")
    if not cpu and os.path.isfile("/proc/cpuinfo"):
        with open("/proc/cpuinfo") as f:
            names = [line.split(":", 1)[1].strip() for line in f if line.startswith("model name")]
        cpu = names[0] if names else None
    logical = int(fields.get("CPU(s)") or os.cpu_count() or 0) or None
    per_socket = fields.get("Core(s) per socket")
    sockets = fields.get("Socket(s)")
    physical = int(per_socket) * int(sockets) if per_socket and sockets else None
    return {"cpu": cpu, "cores": logical, "physical_cores": physical, "source": "lscpu"}


def read_json(path, what):
    if not os.path.isfile(path):
        raise app.UsageError(f"{what} {path!r} does not exist.")
    with open(path) as f:
        return json.load(f)


def read_text(path):
    with open(path) as f:
        return f.read()


def read_rgb(path):
    import numpy as np
    from PIL import Image

    with Image.open(path) as image:
        return np.asarray(image.convert("RGB"))


def compare_on_image(original, stored, image):
    """Class-id checksum of `stored` on `image`, and how far its logits are from `original`'s."""
    import numpy as np

    from keras_fusionseg.models import presets

    batch = image[None].astype("float32")
    reference = np.asarray(original.predict(batch, verbose=0), np.float32)[0]
    logits = np.asarray(stored.predict(batch, verbose=0), np.float32)[0]
    ids, reference_ids = logits.argmax(-1), reference.argmax(-1)
    counts = np.bincount(ids.ravel(), minlength=logits.shape[-1])
    return {
        "class_ids_sha256": presets.class_ids_sha256(ids),
        "height": int(ids.shape[0]),
        "width": int(ids.shape[1]),
        "class_pixel_counts": [int(c) for c in counts],
        "class_ids": ids,
    }, {
        "max_abs_logits_diff": float(np.max(np.abs(logits - reference))),
        "logits_range": [float(reference.min()), float(reference.max())],
        "class_id_agreement": float(np.mean(ids == reference_ids)),
    }


def make_preset(
    checkpoint,
    workdir,
    name,
    *,
    output_root=None,
    description=None,
    config_file=None,
    data_root=DATA_ROOT,
    checksum_image=CHECKSUM_IMAGE,
    dataset_license=None,
    train_minutes=None,
    train_steps=None,
    storage_dtype="float16",
    overwrite=False,
):
    """Writes preset `name` and returns its folder (see the module docstring)."""
    import numpy as np
    from PIL import Image

    from keras_fusionseg import data
    from keras_fusionseg.export.saved_model import load_keras_model
    from keras_fusionseg.models import presets

    if not presets.NAME_PATTERN.fullmatch(name or ""):
        raise app.UsageError(
            f"--name must be lowercase letters, digits and '_' (e.g. "
            f"deeplabv3plus_mobilenetv2_camvid), received {name!r}."
        )
    root = presets.presets_root(output_root)
    target = os.path.join(root, name)
    if os.path.exists(target) and not overwrite:
        raise app.UsageError(
            f"Preset folder {target} already exists; pass --overwrite to replace it."
        )
    config = read_json(os.path.join(workdir, "config.json"), "Workdir config")
    metrics = read_json(os.path.join(workdir, "metrics.json"), "Workdir metrics")
    if metrics.get("resumed_from") and train_minutes is None:
        raise app.UsageError(
            f"{workdir}/metrics.json comes from a resumed run, whose train_seconds cover only "
            "the last session: pass --train_minutes (and --train_steps) for the whole run."
        )
    minutes, steps = train_minutes, train_steps
    if minutes is None and metrics.get("train_seconds") is not None:
        minutes = metrics["train_seconds"] / 60
    steps = steps if steps is not None else metrics.get("train_steps")
    if minutes is None or steps is None:
        raise app.UsageError(
            f"{workdir}/metrics.json has no train_seconds/train_steps: pass --train_minutes "
            "and --train_steps."
        )
    dataset = config["data"]["name"]
    license_text = dataset_license or presets.DATASET_LICENSES.get(dataset)
    if not license_text:
        raise app.UsageError(f"No known licence for dataset {dataset!r}: pass --dataset_license.")
    image_path = checksum_image
    if not os.path.isabs(image_path):
        image_path = os.path.join(data_root, image_path)
    if not os.path.isfile(image_path):
        raise app.UsageError(
            f"Checksum image {image_path!r} does not exist (--checksum_image, --data_root)."
        )
    recorded_image = os.path.relpath(image_path, data_root)
    if recorded_image.startswith(".."):
        recorded_image = os.path.basename(image_path)

    original = presets.inference_model(load_keras_model(checkpoint))
    shape = tuple(original.input_shape)
    if shape[1:3] != (None, None) or shape[-1] != 3:
        raise app.UsageError(
            f"{checkpoint}: a preset takes RGB images of any size, but this model's input is "
            f"{shape}; rebuild it with input_shape=(None, None, 3)."
        )
    data_config = config["data"]
    info = data.get_dataset_info(
        dataset,
        num_classes=data_config.get("num_classes") or None,
        class_names=tuple(data_config.get("class_names") or ()) or None,
    )
    if original.output_shape[-1] != info.num_classes:
        raise app.UsageError(
            f"{checkpoint} predicts {original.output_shape[-1]} classes but dataset "
            f"{dataset!r} has {info.num_classes}."
        )

    os.makedirs(root, exist_ok=True)
    staging = os.path.join(root, f".{name}.partial")
    shutil.rmtree(staging, ignore_errors=True)
    os.makedirs(staging)
    try:
        with open(os.path.join(staging, presets.CONFIG_FILE), "w") as f:
            json.dump(keras_config(original), f)
        weights_path = os.path.join(staging, presets.WEIGHTS_FILE)
        with open(weights_path, "wb") as f:
            f.write(presets.write_weights(presets.weights_by_path(original, storage_dtype)))
        model_config = config.get("model", {})
        metadata = {
            "format_version": presets.FORMAT_VERSION,
            "name": name,
            "description": description
            or (
                f"{model_config.get('name')} on {model_config.get('backbone')} trained on "
                f"{dataset} ({info.num_classes} classes), val mIoU {metrics.get('mean_iou')}."
            ),
            "model": {
                "architecture": model_config.get("name"),
                "backbone": model_config.get("backbone") or "default",
                "output_stride": model_config.get("output_stride"),
                "num_params": int(original.count_params()),
                "input": "RGB pixels in [0, 255], (batch, height, width, 3), any height and width",
                "output": f"float32 logits (batch, height, width, {info.num_classes})",
            },
            "dataset": {
                "name": dataset,
                "license": license_text,
                "num_classes": info.num_classes,
                "class_names": list(info.class_names),
                "palette": [[int(v) for v in c] for c in info.palette],
                "ignore_label": int(info.ignore_label),
            },
            "training": {
                "config": config,
                "config_file": config_file and os.path.relpath(config_file, REPO),
                "config_file_text": read_text(config_file) if config_file else None,
                "metrics": metrics,
                "checkpoint": os.path.basename(checkpoint),
                "metrics_checkpoint": os.path.basename(metrics.get("checkpoint") or ""),
                "minutes": round(minutes, 2),
                "steps": steps,
                "machine": machine(),
            },
            "weights": {
                "file": presets.WEIGHTS_FILE,
                "sha256": presets.file_sha256(weights_path),
                "storage_dtype": storage_dtype,
                "size_bytes": os.path.getsize(weights_path),
            },
        }
        stored = presets.load_model_files(staging)
        checksum, comparison = compare_on_image(original, stored, read_rgb(image_path))
        ids = checksum.pop("class_ids")
        Image.fromarray(ids.astype(np.uint8)).save(os.path.join(staging, presets.CHECKSUM_FILE))
        checksum["class_ids_file"] = presets.CHECKSUM_FILE
        metadata["checksum"] = {"image": recorded_image, **checksum}
        metadata["weights"]["storage_check"] = {"image": recorded_image, **comparison}
        write_metadata(staging, metadata)
        reloaded = presets.from_preset(staging)  # the metadata checks, as users will load it
        again = compare_on_image(stored, reloaded, read_rgb(image_path))[0]
        if again["class_ids_sha256"] != checksum["class_ids_sha256"]:
            raise RuntimeError(f"{staging}: reloading gives other class ids; not written.")
        if os.path.exists(target):
            shutil.rmtree(target)
        os.rename(staging, target)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return target, metadata


def keras_config(model):
    import keras

    return keras.saving.serialize_keras_object(model)


def write_metadata(folder, metadata):
    from keras_fusionseg.models import presets

    with open(os.path.join(folder, presets.METADATA_FILE), "w") as f:
        json.dump(metadata, f, indent=2, allow_nan=True)
        f.write("\n")


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
    target, metadata = make_preset(
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
    )
    check = metadata["weights"]["storage_check"]
    print(
        f"Preset {metadata['name']!r} -> {target} ({metadata['weights']['size_bytes'] / 1e6:.2f}"
        f" MB {metadata['weights']['storage_dtype']} weights). On {check['image']}: max |logits"
        f" - checkpoint logits| {check['max_abs_logits_diff']:.3g}, class ids agree on "
        f"{100 * check['class_id_agreement']:.3f}% of pixels; checksum "
        f"{metadata['checksum']['class_ids_sha256'][:16]}..."
    )


if __name__ == "__main__":
    app.run(main)
