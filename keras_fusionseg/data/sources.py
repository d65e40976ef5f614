"""Where segmentation data comes from, decided in one place.

`resolve_source` says what a source name means (synthetic data, TFDS, a registered dataset's
folder, a user folder, a list file or TFRecords) and lists its files; `load_split` reads the
result, `examples_from_source` converts it to `tf.train.Example`s for `write_tfrecords`.

Each split yields `{"image": uint8 [H, W, C], "label": uint8 [H, W, 1], "filename": string}`
with labels already mapped to train ids. File sources decode lazily inside `tf.data`:
`load_encoded_split` returns the stored records and the function decoding one
(`EncodedSplit`), so `training_pipeline` can shuffle cheap records (file names, serialized
examples) before decoding; `load_split` returns the decoded dataset.

Imports run one way: `registry` <- `tfrecords` <- `sources` <- `pipeline`.
"""

import dataclasses
import os
from collections.abc import Callable

import numpy as np
import tensorflow as tf

from keras_fusionseg.data import registry, synthetic, tfrecords
from keras_fusionseg.data.decode import decode_example

AUTOTUNE = tf.data.AUTOTUNE
IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".gif")
_MAX_LISTED = 20


@dataclasses.dataclass(frozen=True, eq=False)
class EncodedSplit:
    """A split as stored records plus the function that decodes one record.

    Attributes:
        records: `tf.data.Dataset` of stored records (e.g. (image path, label path) pairs or
            parsed TFRecord features), or of decoded examples when `decode` is None.
        decode: function of one record (its tuple elements as arguments) returning the
            example dict, or None.
    """

    records: tf.data.Dataset
    decode: Callable | None = None

    def dataset(self):
        """The decoded dataset, in record order."""
        if self.decode is None:
            return self.records
        return self.records.map(self.decode, num_parallel_calls=AUTOTUNE, deterministic=True)


@dataclasses.dataclass(frozen=True, eq=False)  # array field: compare by identity
class ResolvedSource:
    """One split of a data source as `resolve_source` decided it.

    Attributes:
        source: str, the source as given.
        split: str.
        kind: one of `SOURCE_KINDS`.
        pairs: tuple of (image path, label path) for the file kinds (`registered`, `folder`,
            `list_file`), else None.
        pattern: the TFRecord file or glob (`{split}` filled in) for `tfrecord`, else None.
        num_classes: int or None; label values must be < num_classes or the ignore label.
        label_map: optional 256-entry table from stored label values to train ids.
        ignore_label: int.
        data_dir: the TFDS data dir for `tfds`.
        options: dict of the `synthetic` or `tfds` options.
    """

    source: str
    split: str
    kind: str
    pairs: tuple | None = None
    pattern: str | None = None
    num_classes: int | None = None
    label_map: np.ndarray | None = None
    ignore_label: int = registry.IGNORE_LABEL
    data_dir: str | None = None
    options: dict = dataclasses.field(default_factory=dict)

    def encoded(self):
        """The split as an `EncodedSplit` (files are only read when the dataset runs)."""
        if self.kind == "synthetic":
            return EncodedSplit(synthetic_dataset(self.split, **self.options))
        if self.kind == "tfds":
            from keras_fusionseg.data.tfds_adapter import load_tfds_split

            name = self.source[len("tfds:") :]
            return EncodedSplit(
                load_tfds_split(
                    name,
                    self.split,
                    data_dir=self.data_dir,
                    num_classes=self.num_classes,
                    **self.options,
                )
            )
        if self.kind == "tfrecord":
            return EncodedSplit(
                *tfrecords.tfrecord_records(self.pattern, num_classes=self.num_classes)
            )
        return pairs_split(
            self.pairs,
            num_classes=self.num_classes,
            label_map=self.label_map,
            ignore_label=self.ignore_label,
        )


SOURCE_KINDS = ("synthetic", "tfds", "registered", "folder", "tfrecord", "list_file")


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


def pairs_split(pairs, *, num_classes=None, label_map=None, ignore_label=registry.IGNORE_LABEL):
    """`EncodedSplit` of (image path, label path) pairs: the records are the two paths."""
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

    return EncodedSplit(records, decode)


def synthetic_dataset(split, **options):
    """`synthetic_shapes` split as a dataset (see `synthetic.generate_split` for options)."""
    images, labels = synthetic.generate_split(split, **options)
    names = [f"synthetic_shapes/{split}/{index:05d}" for index in range(len(images))]
    return tf.data.Dataset.from_tensor_slices(
        {"image": images, "label": labels, "filename": tf.constant(names)}
    )


def resolve_source(
    source,
    split,
    *,
    data_dir=None,
    num_classes=None,
    apply_label_map=True,
    **options,
):
    """Decides what `source` is and resolves one split of it (the only place that decides).

    Args:
        source: where the data comes from, checked in this order:
            - `"synthetic_shapes"`: the built-in dataset (options `num_images`, `image_size`,
              `seed`, `border_ignore`);
            - `"tfds:<name>"`: a TensorFlow Datasets dataset (options `image_key`,
              `label_key`, `label_map`; `data_dir` is the TFDS data dir; never downloads);
            - a registered name (`"camvid"`, `"cityscapes"`, ...) read from the folder
              `data_dir`, its label map applied;
            - a folder path (`images/<split>/<stem>.<ext>`, `labels/<split>/<stem>.png`);
            - a TFRecord file or glob (may contain `{split}`), Model Garden feature keys;
            - a list file (`image_path label_path` per line; the name may contain `{split}`).
        split: str, e.g. `"train"` or `"val"`.
        data_dir: folder of a registered dataset, or the TFDS data dir.
        num_classes: int, checks label values (< num_classes or 255); taken from the
            registry or the folder's classes.txt when not given.
        apply_label_map: bool, map stored label values to train ids with the dataset's
            `label_map` (off for files that already hold train ids).
        **options: source-specific options listed above.

    Returns:
        A `ResolvedSource`. Folder and list-file errors (missing folders, unpaired files,
        missing files, empty splits) are raised here, naming the files.
    """
    source = os.fspath(source)
    if not isinstance(split, str) or not split:
        raise ValueError(f"`split` must be a non-empty string, received {split!r}.")
    if source == "synthetic_shapes":
        return ResolvedSource(source, split, "synthetic", options=options)
    if source.startswith("tfds:"):
        return ResolvedSource(
            source, split, "tfds", num_classes=num_classes, data_dir=data_dir, options=options
        )
    if options:
        raise ValueError(f"Unknown options {sorted(options)} for source {source!r}.")
    if source in registry.list_datasets():
        info = registry.get_dataset_info(source)
        if data_dir is None:
            raise ValueError(
                f"Dataset {source!r} is read from a folder: pass `data_dir` "
                "(layout: images/<split>/<stem>.<ext>, labels/<split>/<stem>.png)."
            )
        if num_classes is None and (apply_label_map or info.label_map is None):
            num_classes = info.num_classes  # stored ids are only checked once mapped
        return ResolvedSource(
            source,
            split,
            "registered",
            pairs=tuple(folder_pairs(os.fspath(data_dir), split)),
            num_classes=num_classes,
            label_map=info.label_map if apply_label_map else None,
            ignore_label=info.ignore_label,
        )
    if os.path.isdir(source):
        if num_classes is None and os.path.isfile(os.path.join(source, "classes.txt")):
            num_classes = registry.folder_dataset_info(source).num_classes
        return ResolvedSource(
            source,
            split,
            "folder",
            pairs=tuple(folder_pairs(source, split)),
            num_classes=num_classes,
        )
    if registry.is_tfrecord(source):
        return ResolvedSource(
            source, split, "tfrecord", pattern=source.format(split=split), num_classes=num_classes
        )
    list_file = source.format(split=split)
    if os.path.isfile(list_file):
        return ResolvedSource(
            source,
            split,
            "list_file",
            pairs=tuple(list_file_pairs(list_file)),
            num_classes=num_classes,
        )
    raise ValueError(
        f"`source` {source!r} is not a registered dataset ({registry.list_datasets()}), "
        "a folder, a list file, a TFRecord file/glob or 'tfds:<name>'."
    )


def load_encoded_split(source, split, **kwargs):
    """`load_split` as an `EncodedSplit`: what `training_pipeline` shuffles before decoding.

    Takes the arguments of `resolve_source`."""
    return resolve_source(source, split, **kwargs).encoded()


def load_split(source, split, **kwargs):
    """Loads one split of a segmentation dataset as a `tf.data.Dataset`.

    Takes the arguments of `resolve_source` (`source`, `split`, `data_dir`, `num_classes`,
    `apply_label_map`, source options), which lists the sources.

    Returns:
        A dataset of `{"image": uint8 [H, W, C], "label": uint8 [H, W, 1],
        "filename": string}`; errors on bad data name the file or record. Its cardinality
        is known for every source but TFDS splits of unknown size.
    """
    return load_encoded_split(source, split, **kwargs).dataset()


def examples_from_source(
    source, split, *, data_dir=None, resize_long_side=None, num_classes=None, **options
):
    """`tf.train.Example`s of one split of any `load_split` source, checked on the way.

    File sources (registered name with `data_dir`, folder, list file) are read with PIL and
    their image bytes kept as they are; other sources (`synthetic_shapes`, `tfds:...`,
    TFRecords) are decoded and re-encoded as PNG. Takes the arguments of `resolve_source`
    and `resize_long_side` (shrink images whose long side exceeds it; labels by nearest).
    """
    resolved = resolve_source(source, split, data_dir=data_dir, num_classes=num_classes, **options)
    if resolved.pairs is not None:
        for image_path, label_path in resolved.pairs:
            yield tfrecords.example_from_files(
                image_path,
                label_path,
                resize_long_side=resize_long_side,
                num_classes=resolved.num_classes,
                label_map=resolved.label_map,
                ignore_label=resolved.ignore_label,
            )
        return
    for element in resolved.encoded().dataset().as_numpy_iterator():
        yield tfrecords.example_from_arrays(
            element["image"],
            element["label"],
            element["filename"].decode(),
            resize_long_side=resize_long_side,
        )
