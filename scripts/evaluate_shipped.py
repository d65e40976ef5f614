"""Scores a trained model through every form it ships in, in one run.

    python scripts/evaluate_shipped.py --model=runs/camvid --source=camvid --split=val

Rows: the `evaluate.py` path (the Keras model on whole images: what metrics.json reports),
the exported SavedModel under each size policy (`whole` = the export default, `pad` with
constant and symmetric padding to a multiple of 32, `resize` to `--resize_to`), and TFLite
fp32 and full int8 (dynamic shape, whole images; int8 calibrated on the training split).
Each row gives mIoU, pixel accuracy and the share of pixels whose class equals the
`evaluate.py` path's. Batch norms are folded into their convs first, as `evaluate.py`,
`predict.py` and `export.py` do by default (`--nofold_batch_norm` scores the graph as
trained). Writes `<output>/shipped_scores.json` and prints a Markdown table.
"""

import json
import os
import tempfile

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from absl import app, flags  # noqa: E402

_MODEL = flags.DEFINE_string("model", None, "A .keras file or a training workdir.", required=True)
_SOURCE = flags.DEFINE_string("source", None, "load_split source (e.g. camvid).", required=True)
_DATA_DIR = flags.DEFINE_string("data_dir", None, "data_dir of --source.")
_SPLIT = flags.DEFINE_string("split", "val", "Split to score.")
_CALIBRATION_SPLIT = flags.DEFINE_string("calibration_split", "train", "int8 calibration split.")
_CALIBRATION_IMAGES = flags.DEFINE_integer("calibration_images", 50, "int8 calibration images.")
_MAX_IMAGES = flags.DEFINE_integer("max_images", 0, "Score at most this many images (0: all).")
_RESIZE_TO = flags.DEFINE_list("resize_to", ["256", "352"], "height,width of the resize policy.")
_FORMS = flags.DEFINE_list(
    "forms",
    ["whole", "pad_constant", "pad_symmetric", "resize", "tflite_fp32", "tflite_full_int8"],
    "Shipped forms to score besides the evaluate.py path.",
)
_OUTPUT = flags.DEFINE_string("output", None, "Output folder (default: a temporary one).")
_FOLD_BATCH_NORM = flags.DEFINE_bool(
    "fold_batch_norm", True, "Score every form with batch norms folded, as they ship."
)


def _export_forms(model, output, calibration_images):
    from keras_fusionseg import export

    resize_to = tuple(int(v) for v in _RESIZE_TO.value)
    policies = {
        "whole": {},
        "pad_constant": {"size_policy": "pad", "pad_mode": "constant"},
        "pad_symmetric": {"size_policy": "pad", "pad_mode": "symmetric"},
        "resize": {"size_policy": "resize", "input_size": resize_to},
    }
    segmenters = {}
    for form in _FORMS.value:
        if form in policies:
            path = os.path.join(output, f"saved_model_{form}")
            export.export_saved_model(  # `model` is already folded (or kept as trained)
                model,
                path,
                signatures=("serving_default",),
                fold_batch_norm=False,
                **policies[form],
            )
            segmenters[f"SavedModel ({form})"] = export.load_segmenter(path)
        elif form.startswith("tflite_"):
            quantization = form[len("tflite_") :]
            flatbuffer = export.convert_to_tflite(
                model, quantization=quantization, representative_images=calibration_images()
            )
            path = os.path.join(output, f"model_{quantization}.tflite")
            with open(path, "wb") as f:
                f.write(flatbuffer)
            segmenters[f"TFLite {quantization} (whole)"] = export.load_segmenter(path)
        else:
            raise app.UsageError(f"--forms: unknown form {form!r}.")
        print(f"exported {form}", flush=True)
    return segmenters


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
    import numpy as np

    from keras_fusionseg import data, evaluation, export
    from keras_fusionseg.evaluation import confusion_from_labels, iou_from_confusion

    model = export.load_keras_model(_MODEL.value)
    if _FOLD_BATCH_NORM.value:
        model = export.fold_batch_norm_if_functional(model)
    info = data.get_dataset_info(_SOURCE.value) if _SOURCE.value in data.list_datasets() else None
    num_classes = info.num_classes if info else int(model.output_shape[-1])
    ignore_label = info.ignore_label if info else 255
    channels = model.input_shape[-1]

    def examples():
        split = data.load_split(_SOURCE.value, _SPLIT.value, data_dir=_DATA_DIR.value)
        dataset = data.eval_pipeline(split, channels=channels)
        if _MAX_IMAGES.value:
            dataset = dataset.take(_MAX_IMAGES.value)
        for image, label in dataset.as_numpy_iterator():
            yield image[0].astype(np.uint8), label[0]

    reported = evaluation.evaluate(
        model,
        ((image, label) for image, label in examples()),
        num_classes=num_classes,
        ignore_label=ignore_label,
        verbose=0,
    )
    output = _OUTPUT.value or tempfile.mkdtemp(prefix="shipped_")
    os.makedirs(output, exist_ok=True)

    def calibration_images():
        return export.representative_images(
            _SOURCE.value,
            _CALIBRATION_SPLIT.value,
            data_dir=_DATA_DIR.value,
            num_images=_CALIBRATION_IMAGES.value,
            channels=channels,
        )

    segmenters = _export_forms(model, output, calibration_images)
    pipeline = evaluation.SegmentationPipeline(model)  # what evaluate.py runs
    confusion = {name: np.zeros((num_classes, num_classes)) for name in segmenters}
    agree = dict.fromkeys(segmenters, 0)
    pixels = 0
    for image, label in examples():
        reference = pipeline.class_ids(image)
        pixels += reference.size
        for name, segmenter in segmenters.items():
            ids = segmenter.class_ids(image)
            confusion[name] += confusion_from_labels(label, ids, num_classes, ignore_label).numpy()
            agree[name] += int((ids == reference).sum())
    rows = [
        {
            "form": "evaluate.py (Keras, whole image)",
            "mean_iou": reported["mean_iou"],
            "pixel_accuracy": reported["pixel_accuracy"],
            "agreement": 1.0,
        }
    ]
    for name in segmenters:
        scores = iou_from_confusion(confusion[name])
        rows.append(
            {
                "form": name,
                "mean_iou": scores["mean_iou"],
                "pixel_accuracy": scores["pixel_accuracy"],
                "agreement": agree[name] / max(pixels, 1),
            }
        )
    result = {
        "model": os.path.abspath(_MODEL.value),
        "source": _SOURCE.value,
        "split": _SPLIT.value,
        "num_images": reported["num_images"],
        "fold_batch_norm": _FOLD_BATCH_NORM.value,
        "rows": rows,
    }
    with open(os.path.join(output, "shipped_scores.json"), "w") as f:
        json.dump(result, f, indent=2)
    print(f"{_SOURCE.value} {_SPLIT.value}, {reported['num_images']} images; model {_MODEL.value}")
    print("| form | mIoU | pixel acc. | pixels = evaluate.py |")
    print("|---|---|---|---|")
    for row in rows:
        print(
            f"| {row['form']} | {100 * row['mean_iou']:.2f} | {100 * row['pixel_accuracy']:.2f} "
            f"| {100 * row['agreement']:.3f}% |"
        )
    print(f"Files and shipped_scores.json in {output}")


if __name__ == "__main__":
    app.run(main)
