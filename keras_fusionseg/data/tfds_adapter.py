"""TensorFlow Datasets segmentation datasets mapped to the library's convention.

Never downloads: the dataset must already be prepared in `data_dir` (TFDS would otherwise
retry network access for minutes); when it is not, the error says how to prepare it.
"""

import dataclasses
import os

import tensorflow as tf

from keras_fusionseg.data import registry
from keras_fusionseg.data.decode import check_and_map_label


@dataclasses.dataclass(frozen=True)
class TfdsAdapter:
    """How to read one TFDS dataset: feature keys and the library dataset it maps to."""

    image_key: str
    label_key: str
    dataset: str  # registry name giving num_classes and label_map
    manual: bool = False  # needs files in <data_dir>/downloads/manual


TFDS_ADAPTERS = {
    "oxford_iiit_pet": TfdsAdapter("image", "segmentation_mask", "oxford_iiit_pet"),
    "scene_parse150": TfdsAdapter("image", "annotation", "ade20k"),
    "cityscapes": TfdsAdapter("image_left", "segmentation_label", "cityscapes", manual=True),
}


def _import_tfds():
    try:
        import tensorflow_datasets as tfds
    except ImportError as error:
        raise ImportError(
            "Reading 'tfds:' sources needs tensorflow-datasets and importlib_resources: "
            "pip install 'keras_fusionseg[tfds]'."
        ) from error
    return tfds


def preparation_hint(name, data_dir, manual):
    where = f"--data_dir={data_dir}" if data_dir else "(default data dir ~/tensorflow_datasets)"
    hint = (
        f"TFDS dataset {name!r} is not prepared in {data_dir or '~/tensorflow_datasets'!r} and "
        "this library never downloads. Prepare it on a machine with network access: "
        f"`tfds build {name} {where}`, then copy that data dir here and pass it as `data_dir`."
    )
    if manual:
        hint += (
            f" {name!r} needs a manual download: put the archives in "
            f"{os.path.join(data_dir or '~/tensorflow_datasets', 'downloads', 'manual')!r} first."
        )
    return hint


def load_tfds_split(
    name,
    split,
    *,
    data_dir=None,
    num_classes=None,
    image_key=None,
    label_key=None,
    label_map=None,
):
    """One split of a prepared TFDS dataset as `{"image", "label", "filename"}`.

    Args:
        name: TFDS name, optionally with config (`"cityscapes/semantic_segmentation"`).
        split: TFDS split (slicing like `"train[:10%]"` works).
        data_dir: TFDS data dir holding the prepared dataset.
        num_classes: int, overrides the mapped dataset's number of classes.
        image_key, label_key: feature keys, required for datasets without an adapter
            (known: oxford_iiit_pet, scene_parse150, cityscapes).
        label_map: optional 256-entry table for datasets without an adapter.
    """
    tfds = _import_tfds()
    adapter = TFDS_ADAPTERS.get(name.split("/")[0])
    if adapter is not None:
        info = registry.get_dataset_info(adapter.dataset)
        image_key = image_key or adapter.image_key
        label_key = label_key or adapter.label_key
        label_map = info.label_map if label_map is None else label_map
        num_classes = info.num_classes if num_classes is None else num_classes
    elif image_key is None or label_key is None:
        raise ValueError(
            f"TFDS dataset {name!r} has no built-in adapter ({sorted(TFDS_ADAPTERS)}): "
            "pass `image_key` and `label_key`."
        )
    try:
        builder = tfds.builder(name, data_dir=data_dir)
    except Exception as error:  # TFDS raises its own DatasetNotFoundError types
        raise ValueError(f"Unknown TFDS dataset {name!r}: {error}") from error
    if not builder.is_prepared():
        raise ValueError(preparation_hint(name, data_dir, adapter is not None and adapter.manual))
    features = builder.info.features
    for key in (image_key, label_key):
        if key not in features:
            raise ValueError(
                f"TFDS dataset {name!r} has no feature {key!r}; features: {sorted(features)}."
            )
    dataset = builder.as_dataset(split=split, shuffle_files=False)
    ignore_label = registry.IGNORE_LABEL

    def convert(index, example):
        filename = tf.strings.join([f"tfds:{name}/{split}/", tf.strings.as_string(index)])
        image = example[image_key]
        label = example[label_key][..., :1]  # scene_parse150 repeats the ids over 3 channels
        label = check_and_map_label(
            image,
            label,
            filename,
            num_classes=num_classes,
            label_map=label_map,
            ignore_label=ignore_label,
        )
        return {"image": image, "label": label, "filename": filename}

    return dataset.enumerate().map(convert, num_parallel_calls=tf.data.AUTOTUNE)
