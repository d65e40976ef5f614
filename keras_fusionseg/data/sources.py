"""`load_split`: one entry point for every place segmentation data can come from.

Each source yields `{"image": uint8 [H, W, C], "label": uint8 [H, W, 1], "filename": string}`
with labels already mapped to train ids. File sources decode lazily inside `tf.data`; the
returned dataset remembers its encoded form so `training_pipeline` can shuffle cheap encoded
records before decoding.
"""

import glob
import os

import tensorflow as tf

from keras_fusionseg.data import registry, synthetic
from keras_fusionseg.data.decode import decode_example

AUTOTUNE = tf.data.AUTOTUNE
IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".gif")
_TFRECORD_MARKERS = (".tfrecord", ".tfrec", ".record", "*", "?", "[")
_MAX_LISTED = 20


def lazy_dataset(records, decode, deterministic=True):
    """`records.map(decode)` that also keeps `(records, decode)` for `training_pipeline`."""
    dataset = records.map(decode, num_parallel_calls=AUTOTUNE, deterministic=deterministic)
    dataset._fusionseg_encoded = (records, decode)
    return dataset


def encoded_form(dataset):
    """`(records, decode)` of a dataset made by `load_split`, or None."""
    return getattr(dataset, "_fusionseg_encoded", None)


def _list_names(names):
    names = sorted(names)
    shown = ", ".join(names[:_MAX_LISTED])
    more = f" and {len(names) - _MAX_LISTED} more" if len(names) > _MAX_LISTED else ""
    return shown + more


def folder_pairs(root, split):
    """Sorted (image path, label path) pairs of `root/images/<split>` and `root/labels/<split>`.

    Pairs by file stem; images without a label, labels without an image and two images
    with one stem are errors that list the files.
    """
    image_dir = os.path.join(root, "images", split)
    label_dir = os.path.join(root, "labels", split)
    for folder in (image_dir, label_dir):
        if not os.path.isdir(folder):
            raise ValueError(
                f"Folder dataset {root!r}: split {split!r} needs the folder {folder!r}, "
                "which does not exist (layout: images/<split>/<stem>.<ext>, "
                "labels/<split>/<stem>.png)."
            )
    images, duplicates = {}, []
    for name in os.listdir(image_dir):
        stem, ext = os.path.splitext(name)
        if ext.lower() in IMAGE_EXTENSIONS:
            if stem in images:
                duplicates.append(name)
            images[stem] = os.path.join(image_dir, name)
    labels = {
        os.path.splitext(name)[0]: os.path.join(label_dir, name)
        for name in os.listdir(label_dir)
        if name.lower().endswith(".png")
    }
    if duplicates:
        raise ValueError(
            f"Folder dataset {root!r}: several images share a stem in {image_dir!r}: "
            f"{_list_names(duplicates)}."
        )
    unlabelled = set(images) - set(labels)
    orphans = set(labels) - set(images)
    if unlabelled or orphans:
        problems = []
        if unlabelled:
            problems.append(
                f"images without a label in {label_dir!r}: "
                f"{_list_names(os.path.basename(images[s]) for s in unlabelled)}"
            )
        if orphans:
            problems.append(
                f"labels without an image in {image_dir!r}: "
                f"{_list_names(os.path.basename(labels[s]) for s in orphans)}"
            )
        raise ValueError(f"Folder dataset {root!r}, split {split!r}: " + "; ".join(problems) + ".")
    if not images:
        raise ValueError(f"Folder dataset {root!r}: split {split!r} is empty ({image_dir!r}).")
    return [(images[stem], labels[stem]) for stem in sorted(images)]


def list_file_pairs(list_file):
    """(image path, label path) pairs from a text file of `image_path label_path` lines.

    Relative paths are relative to the list file's folder; blank and `#` lines are skipped.
    """
    base = os.path.dirname(os.path.abspath(list_file))
    pairs, problems = [], []
    with open(list_file, encoding="utf-8") as handle:
        for number, line in enumerate(handle, start=1):
            line = line.strip()
            if not line or line.startswith("#"):
                continue
            fields = line.split()
            if len(fields) != 2:
                problems.append(f"line {number}: expected 'image_path label_path', got {line!r}")
                continue
            paths = [os.path.join(base, field) for field in fields]
            missing = [path for path in paths if not os.path.isfile(path)]
            if missing:
                problems.append(f"line {number}: missing {', '.join(missing)}")
            pairs.append(tuple(paths))
    if problems:
        raise ValueError(
            f"List file {list_file!r}: "
            + "; ".join(problems[:_MAX_LISTED])
            + (f" and {len(problems) - _MAX_LISTED} more" if len(problems) > _MAX_LISTED else "")
        )
    if not pairs:
        raise ValueError(f"List file {list_file!r} lists no image/label pairs (empty split).")
    return pairs


def pairs_dataset(pairs, *, num_classes=None, label_map=None, ignore_label=registry.IGNORE_LABEL):
    """Lazily decoded dataset of (image path, label path) pairs."""
    image_paths = tf.constant([image for image, _ in pairs])
    label_paths = tf.constant([label for _, label in pairs])
    records = tf.data.Dataset.from_tensor_slices((image_paths, label_paths))

    def decode(image_path, label_path):
        return decode_example(
            tf.io.read_file(image_path),
            tf.io.read_file(label_path),
            image_path,
            num_classes=num_classes,
            label_map=label_map,
            ignore_label=ignore_label,
            label_name=label_path,
        )

    return lazy_dataset(records, decode)


def synthetic_dataset(split, **options):
    """`synthetic_shapes` split as a dataset (see `synthetic.generate_split` for options)."""
    images, labels = synthetic.generate_split(split, **options)
    names = [f"synthetic_shapes/{split}/{index:05d}" for index in range(len(images))]
    return tf.data.Dataset.from_tensor_slices(
        {"image": images, "label": labels, "filename": tf.constant(names)}
    )


def is_tfrecord(source):
    return any(marker in os.path.basename(source) for marker in _TFRECORD_MARKERS)


def load_split(
    source,
    split,
    *,
    data_dir=None,
    num_classes=None,
    apply_label_map=True,
    **options,
):
    """Loads one split of a segmentation dataset as a `tf.data.Dataset`.

    Args:
        source: where the data comes from:
            - `"synthetic_shapes"`: the built-in dataset (options `num_images`, `image_size`,
              `seed`, `border_ignore`);
            - a registered name (`"camvid"`, `"cityscapes"`, ...) read from the folder
              `data_dir`, its label map applied;
            - a folder path (`images/<split>/<stem>.<ext>`, `labels/<split>/<stem>.png`);
            - a list file (`image_path label_path` per line);
            - a TFRecord file or glob (may contain `{split}`), Model Garden feature keys;
            - `"tfds:<name>"`: a TensorFlow Datasets dataset (options `image_key`,
              `label_key`; `data_dir` is the TFDS data dir; never downloads).
        split: str, e.g. `"train"` or `"val"`.
        data_dir: folder of a registered dataset, or the TFDS data dir.
        num_classes: int, checks label values (< num_classes or 255); taken from the
            registry or the folder's classes.txt when not given.
        apply_label_map: bool, map stored label values to train ids with the dataset's
            `label_map` (off for files that already hold train ids).
        **options: source-specific options listed above.

    Returns:
        A dataset of `{"image": uint8 [H, W, C], "label": uint8 [H, W, 1],
        "filename": string}`; errors on bad data name the file or record.
    """
    source = os.fspath(source)
    if not isinstance(split, str) or not split:
        raise ValueError(f"`split` must be a non-empty string, received {split!r}.")
    if source == "synthetic_shapes":
        return synthetic_dataset(split, **options)
    if source.startswith("tfds:"):
        from keras_fusionseg.data.tfds_adapter import load_tfds_split

        return load_tfds_split(
            source[len("tfds:") :],
            split,
            data_dir=data_dir,
            num_classes=num_classes,
            **options,
        )
    if options:
        raise ValueError(f"Unknown options {sorted(options)} for source {source!r}.")
    label_map, ignore_label = None, registry.IGNORE_LABEL
    if source in registry.list_datasets():
        info = registry.get_dataset_info(source)
        if data_dir is None:
            raise ValueError(
                f"Dataset {source!r} is read from a folder: pass `data_dir` "
                "(layout: images/<split>/<stem>.<ext>, labels/<split>/<stem>.png)."
            )
        if num_classes is None and (apply_label_map or info.label_map is None):
            num_classes = info.num_classes  # stored ids are only checked once mapped
        label_map = info.label_map if apply_label_map else None
        ignore_label = info.ignore_label
        return pairs_dataset(
            folder_pairs(os.fspath(data_dir), split),
            num_classes=num_classes,
            label_map=label_map,
            ignore_label=ignore_label,
        )
    if os.path.isdir(source):
        if num_classes is None and os.path.isfile(os.path.join(source, "classes.txt")):
            num_classes = registry.folder_dataset_info(source).num_classes
        return pairs_dataset(folder_pairs(source, split), num_classes=num_classes)
    if is_tfrecord(source):
        from keras_fusionseg.data.tfrecords import tfrecord_dataset

        return tfrecord_dataset(source.format(split=split), num_classes=num_classes)
    list_file = source.format(split=split)
    if os.path.isfile(list_file):
        return pairs_dataset(list_file_pairs(list_file), num_classes=num_classes)
    raise ValueError(
        f"`source` {source!r} is not a registered dataset ({registry.list_datasets()}), "
        "a folder, a list file, a TFRecord file/glob or 'tfds:<name>'."
    )


def glob_files_or_empty(pattern):
    """Sorted files matching `pattern` (a path or a glob)."""
    files = sorted(glob.glob(pattern)) if any(c in pattern for c in "*?[") else [pattern]
    return [path for path in files if os.path.isfile(path)]


def glob_files(pattern):
    """Sorted files matching `pattern`, an error naming the pattern when there are none."""
    files = glob_files_or_empty(pattern)
    if not files:
        raise ValueError(f"No TFRecord files match {pattern!r} (empty split).")
    return files
