"""Predicts image files: label PNGs (class ids) and colour overlays with a class legend."""

import glob
import os

import keras
import numpy as np
from PIL import Image

from keras_fusionseg.export.visualize import add_legend, default_palette, overlay

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff")


def list_image_files(inputs):
    """Sorted unique image files from file paths, glob patterns and folders (not recursive)."""
    if isinstance(inputs, str | os.PathLike):
        inputs = [inputs]
    files = []
    for entry in inputs:
        entry = os.fspath(entry)
        if os.path.isdir(entry):
            found = [
                os.path.join(entry, name)
                for name in os.listdir(entry)
                if name.lower().endswith(IMAGE_EXTENSIONS)
            ]
        elif os.path.isfile(entry):
            found = [entry]
        else:
            found = [p for p in glob.glob(entry) if p.lower().endswith(IMAGE_EXTENSIONS)]
        if not found:
            raise ValueError(
                f"Input {entry!r} matches no image file ({', '.join(IMAGE_EXTENSIONS)})."
            )
        files += found
    return sorted(set(files))


def read_image(path, channels):
    """uint8 (H, W, channels) pixels of an image file, converting grey <-> RGB as needed."""
    try:
        with Image.open(path) as image:
            image = image.convert("L" if channels == 1 else "RGB")
            array = np.asarray(image)
    except (OSError, SyntaxError, ValueError) as error:  # PIL's errors for damaged files
        raise ValueError(f"Cannot read image {path!r}: {error}") from error
    return array[..., None] if channels == 1 else array


def dataset_name_for(model_path):
    """The dataset a model was trained on (`models.describe_model`): recorded in its `.keras`
    file, else its workdir's `config.json` or the export's `export_config.json`; None when
    unknown."""
    from keras_fusionseg.models.segmentation_model import describe_model

    dataset = describe_model(path=model_path)["dataset"]
    return dataset["name"] if dataset else None


def class_names_and_palette(dataset=None, num_classes=None):
    """(class names, palette) of a registered dataset, or generic ones for `num_classes`."""
    if dataset:
        from keras_fusionseg import data

        info = data.get_dataset_info(dataset)
        return list(info.class_names), np.asarray(info.palette)
    num_classes = num_classes or 256
    return [f"class {i}" for i in range(num_classes)], default_palette(num_classes)


def predict_files(
    segmenter,
    files,
    output_dir,
    *,
    class_names,
    palette,
    alpha=0.5,
    legend=True,
    progress=True,
    failures=None,
):
    """Writes `<stem>_label.png` (class ids) and `<stem>_overlay.png` for every file.

    Args:
        segmenter: from `load_segmenter` (`.class_ids(image)` and `.channels`).
        files: list of image paths.
        output_dir: str, created if needed.
        class_names, palette: for the overlay and its legend (classes present in the image).
        alpha: float, overlay opacity.
        legend: bool, append a legend of the classes present.
        progress: bool, show a progress bar.
        failures: optional list. When given, a file that cannot be read or predicted is
            appended to it as `(path, message)` and skipped (its outputs are not written,
            every other file's are); without it the first such file raises.

    Returns:
        list of (label path, overlay path).
    """
    os.makedirs(output_dir, exist_ok=True)
    bar = keras.utils.Progbar(len(files), unit_name="image") if progress else None
    written = []
    stems = set()
    for index, path in enumerate(files):
        stem = os.path.splitext(os.path.basename(path))[0]
        if stem in stems:  # same name in two folders
            stem = f"{stem}_{index}"
        stems.add(stem)
        try:
            image = read_image(path, segmenter.channels)
            class_ids = segmenter.class_ids(image)
        except Exception as error:  # any failure on one file is reported, not fatal
            if failures is None:
                raise
            message = getattr(error, "message", None) or str(error)
            failures.append((path, f"{type(error).__name__}: {message}"))
            if bar is not None:
                bar.update(index + 1)
            continue
        label_path = os.path.join(output_dir, f"{stem}_label.png")
        Image.fromarray(class_ids.astype(np.uint8)).save(label_path)
        picture = overlay(image, class_ids, palette, alpha=alpha)
        if legend:
            picture = add_legend(picture, class_names, palette, class_ids=class_ids)
        overlay_path = os.path.join(output_dir, f"{stem}_overlay.png")
        Image.fromarray(picture).save(overlay_path)
        written.append((label_path, overlay_path))
        if bar is not None:
            bar.update(index + 1)
    return written
