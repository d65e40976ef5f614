"""Segments image files with a `.keras` model, a training workdir, a SavedModel, a `.tflite`
or a preset shipped with the package.

    python scripts/predict.py --model=runs/quickstart --inputs=photos/ --output_dir=predictions
    python scripts/predict.py --preset=deeplabv3plus_mobilenetv2_camvid --inputs=street.png
    python scripts/predict.py --model=exported/m/saved_model --inputs='img/*.jpg' --dataset=camvid

For every image it writes `<stem>_label.png` (one channel, the class ids) and
`<stem>_overlay.png` (dataset colours over the image, with a legend of the classes present).
Class names and colours come from --dataset, else from the preset's metadata or the
workdir's or export's config.
A file that cannot be read or predicted is reported and skipped; the others are all written
and the script exits with status 1 (--noskip_errors: stop at the first).
"""

import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from absl import app, flags  # noqa: E402

_MODEL = flags.DEFINE_string("model", None, ".keras file, workdir, SavedModel dir or .tflite file.")
_PRESET = flags.DEFINE_string(
    "preset", None, "A preset name (keras_fusionseg.models.list_presets()) instead of --model."
)
flags.mark_flags_as_mutual_exclusive(["model", "preset"], required=True)
_INPUTS = flags.DEFINE_list("inputs", None, "Image files, globs or folders.", required=True)
_OUTPUT_DIR = flags.DEFINE_string("output_dir", "predictions", "Output folder.")
_DATASET = flags.DEFINE_string("dataset", None, "Registered dataset for class names/colours.")
_NUM_CLASSES = flags.DEFINE_integer("num_classes", None, "Without a dataset: generic names.")
_ALPHA = flags.DEFINE_float("alpha", 0.5, "Overlay opacity in [0, 1].")
_LEGEND = flags.DEFINE_bool("legend", True, "Add a legend of the classes present.")
_SIZE_POLICY = flags.DEFINE_enum(
    "size_policy",
    None,
    ["whole", "pad", "resize"],
    "How .keras and .tflite models meet an image's size (keras_fusionseg.evaluation.inference): "
    "whole = the image as it is (what evaluate.py scores and the exported SavedModel does by "
    "default); pad = padded to a multiple of --size_divisor; resize = to the model's fixed "
    "size. Default: whole, or resize for fixed-size models. A SavedModel has its own baked in.",
)
_SIZE_DIVISOR = flags.DEFINE_integer(
    "size_divisor",
    None,
    "Padding multiple of --size_policy=pad (default 32); > 1 alone implies --size_policy=pad.",
)
_NUM_THREADS = flags.DEFINE_integer("num_threads", None, "TFLite interpreter threads.")
_PRECISION = flags.DEFINE_enum(
    "precision",
    "auto",
    ["float32", "bfloat16", "auto"],
    ".keras models and presets: bfloat16 runs the model rebuilt under the mixed_bfloat16 "
    "policy (float32 weights and logits; keras_fusionseg.export.optimize.to_bfloat16), for "
    "CPUs with native bf16 (AVX512-BF16/AMX with oneDNN on, Arm BF16); auto (default) = "
    "bfloat16 when this CPU has it (keras_fusionseg.utils.precision.native_bfloat16), else "
    "float32. Measured: 1.9x images/s on a Zen 4, CamVid val mIoU 56.80 -> 56.74 (README "
    "Speed); evaluate.py keeps float32 by default so that metrics compare across CPUs.",
)
_FOLD_BATCH_NORM = flags.DEFINE_bool(
    "fold_batch_norm",
    True,
    ".keras models and presets: fold batch norms into their convs first (exact in inference; "
    "+4% images/s on ResNet-50, +11% on MobileNetV2 measured, README Speed).",
)
_SKIP_ERRORS = flags.DEFINE_bool(
    "skip_errors",
    True,
    "A file that cannot be read or predicted is reported and skipped, and the script exits "
    "with status 1 at the end; --noskip_errors stops at the first such file.",
)


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
    from keras_fusionseg.export import predict_files as pf
    from keras_fusionseg.export.optimize import resolve_inference_precision, with_precision
    from keras_fusionseg.export.predictor import load_segmenter
    from keras_fusionseg.export.saved_model import fold_batch_norm_if_functional, is_saved_model_dir

    precision, reason = resolve_inference_precision(_PRECISION.value)
    if _PRECISION.value != "float32":
        print(f"precision {precision} ({reason}; --precision=float32 to force float32)")
    files = pf.list_image_files(_INPUTS.value)
    model_path = _MODEL.value or ""
    options = {}
    size_policy = _SIZE_POLICY.value or ("pad" if (_SIZE_DIVISOR.value or 1) > 1 else None)
    if size_policy:  # a SavedModel refuses them: its size handling is baked in
        options.update(size_policy=size_policy, size_divisor=_SIZE_DIVISOR.value or 32)
    if model_path.endswith(".tflite"):
        options["num_threads"] = _NUM_THREADS.value
    if _PRESET.value:
        from keras_fusionseg.evaluation.inference import SegmentationPipeline
        from keras_fusionseg.models import presets

        model, metadata = presets.load_checkpoint_or_preset(preset=_PRESET.value)
        model = with_precision(model, precision)
        if _FOLD_BATCH_NORM.value:
            model = fold_batch_norm_if_functional(model)
            print("batch norms folded into their convs (--nofold_batch_norm keeps them)")
        segmenter = SegmentationPipeline(model, **options)
        class_names, palette = presets.class_names_and_palette(metadata)
        if _DATASET.value:
            class_names, palette = pf.class_names_and_palette(_DATASET.value)
    else:
        keras_file = not (model_path.endswith(".tflite") or is_saved_model_dir(model_path))
        fold = _FOLD_BATCH_NORM.value and keras_file  # shipped forms have their graph fixed
        if fold:
            print("batch norms folded into their convs (--nofold_batch_norm keeps them)")
        segmenter = load_segmenter(model_path, precision=precision, fold_batch_norm=fold, **options)
        dataset = _DATASET.value or pf.dataset_name_for(model_path)
        class_names, palette = pf.class_names_and_palette(dataset, _NUM_CLASSES.value)
    failures = [] if _SKIP_ERRORS.value else None
    written = pf.predict_files(
        segmenter,
        files,
        _OUTPUT_DIR.value,
        class_names=class_names,
        palette=palette,
        alpha=_ALPHA.value,
        legend=_LEGEND.value,
        progress=len(files) > 1,
        failures=failures,
    )
    source = f"preset {_PRESET.value!r}, " if _PRESET.value else ""
    print(f"{len(written)} images ({source}{segmenter.kind} model) -> {_OUTPUT_DIR.value}/")
    if failures:
        print(f"{len(failures)} of {len(files)} files failed and were skipped:", file=sys.stderr)
        for path, message in failures:
            print(f"  {path}: {message}", file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    app.run(main)
