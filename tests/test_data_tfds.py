"""TFDS adapter: a tiny local builder prepared in the test, and the not-prepared error."""

import time

import numpy as np
import pytest

from keras_fusionseg import data

tfds = pytest.importorskip("tensorflow_datasets")


class KfsTinySegmentation(tfds.core.GeneratorBasedBuilder):
    """Four 8x10 images with Oxford-Pet-style trimaps (1 pet, 2 background, 3 border)."""

    VERSION = tfds.core.Version("1.0.0")

    def _info(self):
        return tfds.core.DatasetInfo(
            builder=self,
            features=tfds.features.FeaturesDict(
                {
                    "image": tfds.features.Image(shape=(None, None, 3)),
                    "segmentation_mask": tfds.features.Image(shape=(None, None, 1)),
                }
            ),
        )

    def _split_generators(self, dl_manager):
        del dl_manager
        return {"train": self._generate_examples(4)}

    def _generate_examples(self, count):
        rng = np.random.default_rng(0)
        for index in range(count):
            yield (
                index,
                {
                    "image": rng.integers(0, 256, (8, 10, 3), np.uint8),
                    "segmentation_mask": rng.integers(1, 4, (8, 10, 1), np.uint8),
                },
            )


@pytest.fixture(scope="module")
def tiny_tfds_dir(tmp_path_factory):
    data_dir = tmp_path_factory.mktemp("tfds")
    KfsTinySegmentation(data_dir=str(data_dir)).download_and_prepare()
    return str(data_dir)


def test_tfds_builder_with_keys_and_label_map(tiny_tfds_dir):
    pet_map = data.get_dataset_info("oxford_iiit_pet").label_map
    ds = data.load_split(
        "tfds:kfs_tiny_segmentation",
        "train",
        data_dir=tiny_tfds_dir,
        image_key="image",
        label_key="segmentation_mask",
        label_map=pet_map,
        num_classes=2,
    )
    raw = list(
        KfsTinySegmentation(data_dir=tiny_tfds_dir).as_dataset(split="train").as_numpy_iterator()
    )
    elements = list(ds.as_numpy_iterator())
    assert len(elements) == 4
    for element, original in zip(elements, raw, strict=True):
        np.testing.assert_array_equal(element["image"], original["image"])
        np.testing.assert_array_equal(element["label"], pet_map[original["segmentation_mask"]])
    assert set(np.unique(elements[0]["label"])) == {0, 1, 255}
    assert elements[1]["filename"] == b"tfds:kfs_tiny_segmentation/train/1"
    x, y = next(iter(data.training_pipeline(ds, crop_size=8, batch_size=4, seed=0)))
    assert x.shape == (4, 8, 8, 3) and y.shape == (4, 8, 8)


def test_tfds_without_keys_is_an_error(tiny_tfds_dir):
    with pytest.raises(ValueError, match="image_key"):
        data.load_split("tfds:kfs_tiny_segmentation", "train", data_dir=tiny_tfds_dir)


def test_unprepared_tfds_fails_at_once_with_instructions(tmp_path):
    start = time.time()
    with pytest.raises(ValueError, match=r"not prepared.*tfds build oxford_iiit_pet"):
        data.load_split("tfds:oxford_iiit_pet", "train", data_dir=str(tmp_path))
    with pytest.raises(ValueError, match=r"manual download"):
        data.load_split("tfds:cityscapes/semantic_segmentation", "train", data_dir=str(tmp_path))
    assert time.time() - start < 10
