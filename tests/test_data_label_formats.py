"""Label PNGs beyond 8-bit grey: 16-bit values and palette indices are read the same by the
folder reader and the TFRecord writer, never silently rescaled to zeros."""

import numpy as np
import pytest
import tensorflow as tf
from PIL import Image

from keras_fusionseg import data
from keras_fusionseg.data import registry, sources, tfrecords


def _folder(root, rng, save_label, values):
    """One 8x10 image with a label of `values` saved by `save_label(array, path)`."""
    (root / "images" / "train").mkdir(parents=True)
    (root / "labels" / "train").mkdir(parents=True)
    Image.fromarray(rng.integers(0, 256, (8, 10, 3), np.uint8)).save(
        root / "images" / "train" / "a.png"
    )
    label = rng.choice(np.asarray(values), (8, 10))
    save_label(label, root / "labels" / "train" / "a.png")
    return label


def _save_16_bit(label, path):
    Image.fromarray(label.astype(np.uint16)).save(path)
    with Image.open(path) as image:
        assert image.mode.startswith("I")  # really stored with 16 bits


def _save_palette(label, path):
    image = Image.fromarray(label.astype(np.uint8), mode="P")
    image.putpalette(registry.default_palette(256).reshape(-1).tolist())
    image.save(path)


def _folder_labels(root):
    return [e["label"][..., 0] for e in data.load_split(str(root), "train").as_numpy_iterator()]


def _tfrecord_labels(root, tmp_path):
    examples = sources.examples_from_source(str(root), "train")
    tfrecords.write_tfrecords(examples, tmp_path / "out.tfrecord")
    read = data.load_split(str(tmp_path / "out-*.tfrecord"), "train")
    return [e["label"][..., 0] for e in read.as_numpy_iterator()]


@pytest.mark.parametrize("save_label", [_save_16_bit, _save_palette], ids=["16-bit", "palette"])
def test_both_paths_keep_the_stored_class_ids(tmp_path, rng, save_label):
    label = _folder(tmp_path / "ds", rng, save_label, [0, 1, 2, 5, 255])
    (folder,) = _folder_labels(tmp_path / "ds")
    (written,) = _tfrecord_labels(tmp_path / "ds", tmp_path)
    np.testing.assert_array_equal(folder, label)
    np.testing.assert_array_equal(written, label)


def test_16_bit_values_above_255_are_refused_naming_the_file(tmp_path, rng):
    _folder(tmp_path / "ds", rng, _save_16_bit, [0, 1, 300])
    with pytest.raises(tf.errors.InvalidArgumentError, match=r"(?s)above 255.*labels/train/a.png"):
        _folder_labels(tmp_path / "ds")
    with pytest.raises(ValueError, match=r"outside 0..255 in .*labels/train/a.png.*largest 300"):
        list(sources.examples_from_source(str(tmp_path / "ds"), "train"))
