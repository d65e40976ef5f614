r"""Exports a trained model: a SavedModel with raw-image signatures, and optionally TFLite files.

    python scripts/export.py --model=runs/quickstart --output=exported/quickstart
    python scripts/export.py --model=model.keras --output=exported/m --size_policy=resize \
        --input_size=512,512 --probabilities --tflite=fp32,fp16,dynamic_int8,full_int8 --onnx
    python scripts/export.py --preset=deeplabv3plus_mobilenetv2_camvid --output=exported/camvid

`--model` is a `.keras` file or a training workdir (its `checkpoints/final.keras`); `--preset`
a preset shipped with the package (its training config names the calibration data). The
SavedModel goes to `--output/saved_model`, TFLite files to `--output/model_<quantization>.tflite`,
ONNX (`--onnx`, needs the `onnx` extra) to `--output/model.onnx` (logits and class ids).
Full int8 is calibrated on `--calibration_images` images of the training data (the workdir's
dataset unless `--calibration_source` is given).
"""

import json
import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from absl import app, flags  # noqa: E402

_MODEL = flags.DEFINE_string("model", None, "A .keras file or a training workdir.")
_PRESET = flags.DEFINE_string(
    "preset", None, "A preset name (keras_fusionseg.models.list_presets()) instead of --model."
)
flags.mark_flags_as_mutual_exclusive(["model", "preset"], required=True)
_OUTPUT = flags.DEFINE_string("output", None, "Output folder.", required=True)
_SIZE_POLICY = flags.DEFINE_enum(
    "size_policy",
    None,
    ["whole", "pad", "native", "resize"],
    "whole: run on the image as it is (what evaluate.py scores); pad: padded to a multiple of "
    "--size_divisor and cropped back (native: its former name); resize: to --input_size. "
    "Default: resize for fixed-size models, whole otherwise.",
)
_SIZE_DIVISOR = flags.DEFINE_integer("size_divisor", 32, "Padding multiple for --size_policy=pad.")
_INPUT_SIZE = flags.DEFINE_list("input_size", [], "height,width for --size_policy=resize.")
_PAD_VALUE = flags.DEFINE_float("pad_value", 127.5, "Raw pixel value of constant padding.")
_PAD_MODE = flags.DEFINE_enum("pad_mode", "constant", ["constant", "symmetric"], "Padding mode.")
_FOLD_BATCH_NORM = flags.DEFINE_bool(
    "fold_batch_norm",
    True,
    "Export the SavedModel with batch norms folded into their convs (exact in inference; "
    "+4% images/s on ResNet-50, +11% on MobileNetV2 measured, README Speed).",
)
_PROBABILITIES = flags.DEFINE_bool("probabilities", False, "Also output class probabilities.")
_TFLITE = flags.DEFINE_list(
    "tflite", [], "Quantizations to convert to: fp32, fp16, dynamic_int8, full_int8."
)
_TFLITE_INPUT_SIZE = flags.DEFINE_list(
    "tflite_input_size", [], "height,width of fixed-shape TFLite models (default: dynamic)."
)
_CALIBRATION_SOURCE = flags.DEFINE_string(
    "calibration_source", None, "load_split source for full int8 (default: the workdir's)."
)
_CALIBRATION_SPLIT = flags.DEFINE_string("calibration_split", "train", "Calibration split.")
_CALIBRATION_DATA_DIR = flags.DEFINE_string("calibration_data_dir", None, "Its data_dir.")
_CALIBRATION_IMAGES = flags.DEFINE_integer("calibration_images", 100, "Calibration images.")
_ONNX = flags.DEFINE_bool(
    "onnx", False, "Also write model.onnx (logits + class_ids; needs the onnx extra)."
)


def _size(values, flag):
    if not values:
        return None
    try:
        height, width = (int(v) for v in values)
    except ValueError:
        raise app.UsageError(f"--{flag} must be height,width, received {values}.") from None
    return height, width


def _workdir_data(model, model_path, metadata=None):
    """(dataset name, data_dir) the model was trained on (`models.describe_model`: the model's
    own record, the preset's training config, else the workdir's `config.json`); (None, None)
    when unknown."""
    from keras_fusionseg.models import describe_model

    dataset = describe_model(model, path=model_path or None, metadata=metadata)["dataset"]
    return (dataset["name"], dataset["data_dir"]) if dataset else (None, None)


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
    from keras_fusionseg import export
    from keras_fusionseg.models import presets

    model, metadata = presets.load_checkpoint_or_preset(
        _MODEL.value, _PRESET.value, checkpoint_flag="model"
    )
    model_path = _MODEL.value or ""
    os.makedirs(_OUTPUT.value, exist_ok=True)
    saved_model_dir = os.path.join(_OUTPUT.value, "saved_model")
    pipeline = export.export_saved_model(
        model,
        saved_model_dir,
        size_policy=_SIZE_POLICY.value,
        size_divisor=_SIZE_DIVISOR.value,
        pad_mode=_PAD_MODE.value,
        input_size=_size(_INPUT_SIZE.value, "input_size"),
        pad_value=_PAD_VALUE.value,
        include_probabilities=_PROBABILITIES.value,
        fold_batch_norm=_FOLD_BATCH_NORM.value,
    )
    with open(os.path.join(_OUTPUT.value, "export_config.json"), "w") as f:
        dataset = _CALIBRATION_SOURCE.value or _workdir_data(model, model_path, metadata)[0]
        origin = f"preset:{_PRESET.value}" if _PRESET.value else os.path.abspath(model_path)
        record = {
            "model": origin,
            "dataset": dataset,
            "fold_batch_norm": _FOLD_BATCH_NORM.value,
            **pipeline.config(),
        }
        json.dump(record, f, indent=2)
    print(f"SavedModel ({pipeline.size_policy} size policy) written to {saved_model_dir}")

    unknown = [q for q in _TFLITE.value if q not in export.QUANTIZATIONS]
    if unknown:
        raise app.UsageError(f"--tflite: unknown {unknown}; choose from {export.QUANTIZATIONS}.")
    tflite_size = _size(_TFLITE_INPUT_SIZE.value, "tflite_input_size")
    calibration = None
    for quantization in _TFLITE.value:
        if quantization == "full_int8" and calibration is None:
            source, data_dir = _workdir_data(model, model_path, metadata)
            source = _CALIBRATION_SOURCE.value or source
            if source is None:
                raise app.UsageError("full_int8 needs --calibration_source (no workdir config).")
            calibration = export.representative_images(
                source,
                _CALIBRATION_SPLIT.value,
                data_dir=_CALIBRATION_DATA_DIR.value or data_dir,
                num_images=_CALIBRATION_IMAGES.value,
                input_size=tflite_size,
                channels=model.input_shape[-1],
            )
        flatbuffer = export.convert_to_tflite(
            model,
            quantization=quantization,
            input_size=tflite_size,
            representative_images=calibration,
        )
        path = os.path.join(_OUTPUT.value, f"model_{quantization}.tflite")
        with open(path, "wb") as f:
            f.write(flatbuffer)
        print(f"TFLite {quantization}: {path} ({len(flatbuffer) / 1e6:.2f} MB)")
    if _ONNX.value:
        onnx_path = os.path.join(_OUTPUT.value, "model.onnx")
        export.export_onnx(model, onnx_path, class_ids=True)
        print(f"ONNX: {onnx_path} ({os.path.getsize(onnx_path) / 1e6:.2f} MB)")


if __name__ == "__main__":
    app.run(main)
