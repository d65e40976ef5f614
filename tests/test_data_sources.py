"""Sources: folders, list files, TFRecords (round trip, atomic shards), registry, bad data."""

import io
import os
import pathlib

import numpy as np
import pytest
import tensorflow as tf
from conftest import shared_dataset
from PIL import Image

from keras_fusionseg import data
from keras_fusionseg.data import registry, sources, tfrecords
from keras_fusionseg.training.config import default_config, validate_config


def _save(path, array, fmt="PNG"):
    path = pathlib.Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path, format=fmt)
    return path


def make_folder(root, rng, split="train", count=3, size=(12, 16), num_classes=4, gray=False):
    """A folder dataset: images/<split>/<stem>.png, labels/<split>/<stem>.png, classes.txt."""
    root = pathlib.Path(root)
    for i in range(count):
        shape = size if gray else (*size, 3)
        _save(root / "images" / split / f"img{i}.png", rng.integers(0, 256, shape, np.uint8))
        label = rng.integers(0, num_classes, size, np.uint8)
        label[0, 0] = 255
        _save(root / "labels" / split / f"img{i}.png", label)
    (root / "classes.txt").write_text("".join(f"c{i}\n" for i in range(num_classes)))
    return root


def _elements(ds):
    return list(ds.as_numpy_iterator())


def _assert_same(first, second):
    assert len(first) == len(second)
    for a, b in zip(first, second, strict=True):
        np.testing.assert_array_equal(a["image"], b["image"])
        np.testing.assert_array_equal(a["label"], b["label"])


def _round_trip(source, split, tmp_path, num_shards=2, **kwargs):
    original = _elements(data.load_split(source, split, **kwargs))
    examples = sources.examples_from_source(source, split, **kwargs)
    paths, count = tfrecords.write_tfrecords(examples, tmp_path / "out.tfrecord", num_shards)
    assert count == len(original) and len(paths) == num_shards
    read = _elements(data.load_split(str(tmp_path / "out-*.tfrecord"), split))
    _assert_same(original, read)
    names = [[os.path.basename(e["filename"]) for e in elements] for elements in (original, read)]
    assert names[0] == names[1]
    return read


def test_folder_reads_pairs_in_stem_order(tmp_path, rng):
    root = make_folder(tmp_path / "ds", rng)
    elements = _elements(data.load_split(str(root), "train"))
    assert [os.path.basename(e["filename"]) for e in elements] == [
        b"img0.png",
        b"img1.png",
        b"img2.png",
    ]
    expected = np.asarray(Image.open(root / "labels/train/img1.png"))
    np.testing.assert_array_equal(elements[1]["label"][..., 0], expected)
    assert elements[0]["image"].shape == (12, 16, 3) and elements[0]["label"].dtype == np.uint8


def test_folder_to_tfrecord_round_trip_is_identical(tmp_path, rng):
    root = make_folder(tmp_path / "ds", rng, count=5)
    _round_trip(str(root), "train", tmp_path)


def test_grayscale_round_trip_and_list_file(tmp_path, rng):
    root = make_folder(tmp_path / "ds", rng, gray=True)
    list_file = tmp_path / "train.txt"
    list_file.write_text(
        "".join(f"ds/images/train/img{i}.png ds/labels/train/img{i}.png\n" for i in range(3))
    )
    from_list = _elements(data.load_split(str(tmp_path / "{split}.txt"), "train"))
    _assert_same(_elements(data.load_split(str(root), "train")), from_list)
    assert from_list[0]["image"].shape == (12, 16, 1)
    read = _round_trip(str(list_file), "train", tmp_path, num_shards=1)
    assert read[0]["image"].shape == (12, 16, 1)


def test_synthetic_to_tfrecord_round_trip(tmp_path):
    _round_trip("synthetic_shapes", "val", tmp_path, num_images=3, image_size=32)


def test_shared_data_round_trip(tmp_path):
    # a few real CamVid (RGB) and ISBI (grayscale) pairs, through a list file
    lines = []
    for name, split in (("camvid", "val"), ("isbi2012_membrane", "train")):
        root = shared_dataset(name)
        for stem in sorted(os.listdir(root / "images" / split))[:2]:
            lines.append(f"{root / 'images' / split / stem} {root / 'labels' / split / stem}\n")
    list_file = tmp_path / "real.txt"
    list_file.write_text("".join(lines))
    read = _round_trip(str(list_file), "any", tmp_path)
    assert read[0]["image"].shape == (360, 480, 3) and read[2]["image"].shape == (512, 512, 1)
    camvid = _elements(data.load_split("camvid", "val", data_dir=shared_dataset("camvid")).take(1))
    _assert_same(camvid, read[:1])


def test_resize_long_side(tmp_path, rng):
    root = make_folder(tmp_path / "ds", rng, size=(20, 40))
    examples = sources.examples_from_source(str(root), "train", resize_long_side=10)
    tfrecords.write_tfrecords(examples, tmp_path / "small.tfrecord")
    element = _elements(data.load_split(str(tmp_path / "small-*.tfrecord"), "train"))[0]
    assert element["image"].shape == (5, 10, 3) and element["label"].shape == (5, 10, 1)
    assert set(np.unique(element["label"])) <= {0, 1, 2, 3, 255}


def test_failed_write_leaves_no_shard(tmp_path, rng):
    root = make_folder(tmp_path / "ds", rng, count=4)
    (root / "images/train/img2.png").write_bytes(b"\x89PNG\r\n\x1a\n garbage")
    out = tmp_path / "out"
    examples = sources.examples_from_source(str(root), "train")
    with pytest.raises(ValueError, match="img2.png"):
        tfrecords.write_tfrecords(examples, out / "train.tfrecord", num_shards=2)
    assert os.listdir(out) == []


def test_registry_metadata():
    assert len(data.get_dataset_info("pascal_voc").class_names) == 21
    assert len(registry.ADE20K_CLASSES) == 150 and len(registry.PASCAL_CONTEXT_CLASSES) == 59
    cityscapes = data.get_dataset_info("cityscapes")
    assert cityscapes.num_classes == 19
    table = cityscapes.label_map
    assert table[7] == 0 and table[8] == 1 and table[26] == 13 and table[33] == 18
    assert table[0] == 255 and table[6] == 255 and table[34] == 255
    ade = data.get_dataset_info("ade20k")
    assert ade.num_classes == 150 and ade.label_map[0] == 255 and ade.label_map[150] == 149
    assert data.get_dataset_info("pascal_context").num_classes == 59
    assert data.get_dataset_info("pascal_context_60").class_names[0] == "background"
    assert data.get_dataset_info("isbi2012_membrane").num_classes == 2
    for name in data.list_datasets():
        info = data.get_dataset_info(name)
        assert info.palette.shape == (info.num_classes, 3) and info.ignore_label == 255


def test_camvid_names_match_shared_classes_file():
    names = (shared_dataset("camvid") / "classes.txt").read_text().split()
    assert list(data.get_dataset_info("camvid").class_names) == names


def test_user_folder_info(tmp_path, rng):
    root = make_folder(tmp_path / "ds", rng, num_classes=5)
    assert data.get_dataset_info(str(root)).num_classes == 5
    (root / "classes.txt").unlink()
    with pytest.raises(ValueError, match="num_classes"):
        data.get_dataset_info(str(root))
    assert data.get_dataset_info(str(root), num_classes=3).class_names == (
        "class_0",
        "class_1",
        "class_2",
    )


def test_registered_folder_applies_label_map(tmp_path, rng):
    root = tmp_path / "city"
    _save(root / "images/val/a.png", rng.integers(0, 256, (4, 4, 3), np.uint8))
    _save(root / "labels/val/a.png", np.array([[7, 8, 0, 33]] * 4, np.uint8))
    element = _elements(data.load_split("cityscapes", "val", data_dir=root))[0]
    np.testing.assert_array_equal(element["label"][0, :, 0], [0, 1, 255, 18])
    raw = _elements(data.load_split("cityscapes", "val", data_dir=root, apply_label_map=False))
    np.testing.assert_array_equal(raw[0]["label"][0, :, 0], [7, 8, 0, 33])


@pytest.fixture
def user_registration():
    """Registers a user dataset for one test and removes it afterwards."""
    names = []

    def register(info):
        names.append(info.name)
        return data.register_dataset(info)

    yield register
    for name in names:
        registry._DATASETS.pop(name, None)


def test_register_dataset_makes_a_user_dataset_loadable_by_name(tmp_path, rng, user_registration):
    # Stored values 10 / 20 / 30 are train ids 0 / 1 / 2; 0 is void (not trained on).
    table = np.full(256, 255, np.uint8)
    table[[10, 20, 30]] = [0, 1, 2]
    info = data.DatasetInfo("user_roads", 3, ("road", "car", "sky"), label_map=table)
    assert user_registration(info) is info
    assert "user_roads" in data.list_datasets()
    assert data.get_dataset_info("user_roads") is info
    root = tmp_path / "roads"
    _save(root / "images/train/a.png", rng.integers(0, 256, (3, 4, 3), np.uint8))
    _save(root / "labels/train/a.png", np.array([[10, 20, 30, 0]] * 3, np.uint8))
    label = _elements(data.load_split("user_roads", "train", data_dir=root))[0]["label"]
    np.testing.assert_array_equal(label[..., 0], [[0, 1, 2, 255]] * 3)
    # A stored value outside the table's classes is an error naming the file.
    _save(root / "labels/train/a.png", np.array([[10, 20, 30, 40]] * 3, np.uint8))
    table[40] = 7
    user_registration(data.DatasetInfo("user_roads_bad", 3, ("r", "c", "s"), label_map=table))
    with pytest.raises(Exception, match="a.png"):
        _elements(data.load_split("user_roads_bad", "train", data_dir=root))
    # Training configs accept the name and take the class count from the registration.
    config = default_config()
    config.data.name, config.data.data_dir = "user_roads", str(root)
    validate_config(config, str(tmp_path / "run"))
    config.data.num_classes = 5
    with pytest.raises(ValueError, match="num_classes 5 differs from dataset 'user_roads'"):
        validate_config(config, str(tmp_path / "run"))
    with pytest.raises(ValueError, match="'user_roads' is registered twice"):
        data.register_dataset(data.DatasetInfo("user_roads", 1, ("x",)))
    assert data.get_dataset_info("user_roads") is info  # the first registration stands


# ----------------------------------------------------------------------------------------
# Bad data: each case fails with an error naming the file or record.


def _read_all(source, split="train", **kwargs):
    for _ in data.load_split(source, split, **kwargs):
        pass


def _png_bytes(array):
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="PNG")
    return buffer.getvalue()


def test_corrupt_image_names_file(tmp_path, rng):
    root = make_folder(tmp_path / "ds", rng)
    (root / "images/train/img1.png").write_bytes(b"not an image at all")
    with pytest.raises(tf.errors.InvalidArgumentError, match=r"(?s)Corrupt image.*img1.png"):
        _read_all(str(root))


def test_truncated_image_names_file(tmp_path, rng):
    root = make_folder(tmp_path / "ds", rng)
    path = root / "images/train/img2.png"
    path.write_bytes(path.read_bytes()[:-40])
    with pytest.raises(tf.errors.InvalidArgumentError, match=r"(?s)Truncated image.*img2.png"):
        _read_all(str(root))
    jpeg = io.BytesIO()
    Image.fromarray(rng.integers(0, 256, (12, 16, 3), np.uint8)).save(jpeg, format="JPEG")
    path.unlink()
    (root / "images/train/img2.jpg").write_bytes(jpeg.getvalue()[:-100])
    with pytest.raises(tf.errors.InvalidArgumentError, match=r"(?s)Truncated image.*img2.jpg"):
        _read_all(str(root))


def test_label_size_mismatch_names_file(tmp_path, rng):
    root = make_folder(tmp_path / "ds", rng)
    _save(root / "labels/train/img0.png", np.zeros((12, 15), np.uint8))
    with pytest.raises(tf.errors.InvalidArgumentError, match=r"(?s)Label size differs.*img0.png"):
        _read_all(str(root))
    with pytest.raises(ValueError, match=r"Label size differs.*img0.png"):
        list(sources.examples_from_source(str(root), "train"))


def test_label_out_of_range_names_file(tmp_path, rng):
    root = make_folder(tmp_path / "ds", rng, num_classes=4)
    _save(root / "labels/train/img1.png", np.full((12, 16), 7, np.uint8))
    with pytest.raises(
        tf.errors.InvalidArgumentError,
        match=r"(?s)out of range.*labels/train/img1.png.*bad value.*7",  # the label file
    ):
        _read_all(str(root))
    with pytest.raises(ValueError, match=r"out of range in .*img1.png.*\[7\]"):
        list(sources.examples_from_source(str(root), "train"))
    _read_all(str(root), num_classes=8)  # fine once 7 is a class


@pytest.mark.parametrize("which", ["image", "label"])
def test_unexpected_channel_count_names_file(tmp_path, rng, which):
    root = make_folder(tmp_path / "ds", rng)
    if which == "image":  # RGBA
        _save(root / "images/train/img1.png", rng.integers(0, 256, (12, 16, 4), np.uint8))
    else:  # a colour label instead of class ids
        _save(root / "labels/train/img1.png", rng.integers(0, 4, (12, 16, 3), np.uint8))
    pattern = rf"(?s)Unexpected channel count in {which}.*img1.png"
    with pytest.raises(tf.errors.InvalidArgumentError, match=pattern):
        _read_all(str(root))
    with pytest.raises(ValueError, match=rf"Unexpected channel count in {which}.*img1.png"):
        list(sources.examples_from_source(str(root), "train"))


def test_unpaired_files_are_listed(tmp_path, rng):
    root = make_folder(tmp_path / "ds", rng)
    (root / "labels/train/img0.png").unlink()
    _save(root / "labels/train/extra.png", np.zeros((12, 16), np.uint8))
    with pytest.raises(ValueError, match=r"without a label.*img0.png.*without an image.*extra.png"):
        data.load_split(str(root), "train")


def test_empty_split_and_missing_files(tmp_path, rng):
    root = make_folder(tmp_path / "ds", rng)
    for folder in ("images", "labels"):
        (root / folder / "val").mkdir()
    with pytest.raises(ValueError, match=r"split 'val' is empty"):
        data.load_split(str(root), "val")
    with pytest.raises(ValueError, match=r"No TFRecord files match .*nothing-\*.tfrecord"):
        data.load_split(str(tmp_path / "nothing-*.tfrecord"), "train")
    (tmp_path / "empty.txt").write_text("# no pairs\n")
    with pytest.raises(ValueError, match="lists no image/label pairs"):
        data.load_split(str(tmp_path / "empty.txt"), "train")
    (tmp_path / "bad.txt").write_text("ds/images/train/img0.png ds/labels/train/gone.png\n")
    with pytest.raises(ValueError, match=r"line 1: missing .*gone.png"):
        data.load_split(str(tmp_path / "bad.txt"), "train")
    with pytest.raises(ValueError, match="split 'test' needs the folder"):
        data.load_split(str(root), "test")
    with pytest.raises(ValueError, match="empty split"):
        tfrecords.write_tfrecords(iter([]), tmp_path / "none.tfrecord")
    assert not list(tmp_path.glob("none*"))


@pytest.mark.parametrize("missing", tfrecords.REQUIRED_KEYS)
def test_tfrecord_without_required_key_names_record(tmp_path, rng, missing):
    image = rng.integers(0, 256, (6, 5, 3), np.uint8)
    good = tfrecords.example_from_arrays(image, np.zeros((6, 5), np.uint8), "good.png")
    bad = tfrecords.example_from_arrays(image, np.zeros((6, 5), np.uint8), "bad.png")
    del bad.features.feature[missing]
    paths, _ = tfrecords.write_tfrecords([good, bad], tmp_path / "x.tfrecord")
    pattern = (
        rf"(?s)lacks the required key {missing}.*x-00000-of-00001.tfrecord record 1 \(bad.png\)"
    )
    with pytest.raises(tf.errors.InvalidArgumentError, match=pattern):
        _read_all(paths[0])


def _module_imports(module):
    """Modules of the `keras_fusionseg.data` package that `module` imports (any depth)."""
    import ast

    tree = ast.parse(pathlib.Path(module.__file__).read_text())
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
            names.update(f"{node.module}.{alias.name}" for alias in node.names)
        elif isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
    return {name.rsplit(".", 1)[-1] for name in names if name.startswith("keras_fusionseg.data")}


def test_data_modules_import_one_way():
    # registry <- tfrecords <- sources <- pipeline: the file format never asks where data
    # comes from, and the registry asks neither.
    assert "sources" not in _module_imports(tfrecords)
    assert not {"sources", "tfrecords"} & _module_imports(registry)


def test_one_resolver_decides_every_source_kind(tmp_path, rng):
    root = make_folder(tmp_path / "ds", rng)
    (tmp_path / "train.txt").write_text("ds/images/train/img0.png ds/labels/train/img0.png\n")
    paths, _ = tfrecords.write_tfrecords(
        sources.examples_from_source(str(root), "train"), tmp_path / "train.tfrecord"
    )
    kinds = {
        "synthetic_shapes": "synthetic",
        str(root): "folder",
        str(tmp_path / "{split}.txt"): "list_file",
        str(tmp_path / "{split}-*.tfrecord"): "tfrecord",
    }
    for source, kind in kinds.items():
        resolved = sources.resolve_source(source, "train")
        assert resolved.kind == kind
    assert sources.resolve_source(str(tmp_path / "{split}-*.tfrecord"), "train").pattern == str(
        tmp_path / "train-*.tfrecord"
    )
    city = sources.resolve_source("cityscapes", "train", data_dir=root)
    assert city.kind == "registered" and city.label_map is not None and city.num_classes == 19
    # load_split and examples_from_source decide alike: unknown options are refused by both.
    for read in (data.load_split, lambda *a, **k: list(sources.examples_from_source(*a, **k))):
        with pytest.raises(ValueError, match=r"Unknown options \['size'\]"):
            read(str(root), "train", size=3)


def test_examples_from_source_honours_apply_label_map(tmp_path, rng):
    root = tmp_path / "city"
    _save(root / "images/val/a.png", rng.integers(0, 256, (4, 4, 3), np.uint8))
    _save(root / "labels/val/a.png", np.array([[7, 8, 0, 33]] * 4, np.uint8))
    for apply_label_map, expected in ((True, [0, 1, 255, 18]), (False, [7, 8, 0, 33])):
        examples = sources.examples_from_source(
            "cityscapes", "val", data_dir=root, apply_label_map=apply_label_map
        )
        tfrecords.write_tfrecords(examples, tmp_path / f"{apply_label_map}.tfrecord")
        (element,) = _elements(data.load_split(str(tmp_path / f"{apply_label_map}-*"), "val"))
        np.testing.assert_array_equal(element["label"][0, :, 0], expected)


def test_encoded_split_is_explicit_and_decodes_after_the_shuffle(tmp_path, rng):
    root = make_folder(tmp_path / "ds", rng, count=4)
    tfrecords.write_tfrecords(
        sources.examples_from_source(str(root), "train"), tmp_path / "t.tfrecord", num_shards=2
    )
    for source in (str(root), str(tmp_path / "t-*.tfrecord")):
        encoded = data.load_encoded_split(source, "train")
        # Folder records are (image path, label path): nothing is decoded until `decode`.
        assert encoded.decode is not None
        decoded = data.load_split(source, "train")
        assert not hasattr(decoded, "_fusionseg_encoded")
        _assert_same(_elements(encoded.dataset()), _elements(decoded))
        batches = [
            list(
                data.training_pipeline(
                    ds,
                    crop_size=8,
                    batch_size=2,
                    seed=3,
                    deterministic=True,
                    repeat=True,
                    shuffle_buffer=6,
                )
                .take(2)
                .as_numpy_iterator()
            )
            for ds in (encoded, decoded.map(lambda e: e))  # a plain dataset, mapped
        ]
        for other in batches[1:]:
            for (image, label), (other_image, other_label) in zip(batches[0], other, strict=True):
                np.testing.assert_array_equal(image, other_image)
                np.testing.assert_array_equal(label, other_label)


def test_every_file_source_knows_its_length(tmp_path, rng):
    # The evaluation progress bar shows "n/total" only when the dataset's length is known.
    root = make_folder(tmp_path / "ds", rng, count=3)
    tfrecords.write_tfrecords(
        sources.examples_from_source(str(root), "train"), tmp_path / "t.tfrecord", num_shards=2
    )
    (tmp_path / "train.txt").write_text("ds/images/train/img0.png ds/labels/train/img0.png\n")
    expected = {str(root): 3, str(tmp_path / "t-*.tfrecord"): 3, str(tmp_path / "train.txt"): 1}
    for source, count in expected.items():
        ds = data.load_split(source, "train")
        assert int(ds.cardinality()) == count
        assert int(data.eval_pipeline(ds).cardinality()) == count
        assert len(list(ds)) == count


def test_evaluation_progress_bar_knows_its_total(tmp_path, rng, capsys):
    import re

    import keras

    from keras_fusionseg.evaluation import evaluator

    root = make_folder(tmp_path / "ds", rng, count=3)
    model = keras.Sequential([keras.Input((None, None, 3)), keras.layers.Conv2D(4, 1)])
    for max_images, shown in ((0, "3/3"), (2, "2/2")):
        capsys.readouterr()
        evaluator.evaluate(
            model,
            data.eval_pipeline(data.load_split(str(root), "train")),
            num_classes=4,
            max_images=max_images,
            verbose=1,
        )
        output = re.sub(r"\x1b\[[0-9;]*m", "", capsys.readouterr().out)
        assert shown in output and "Unknown" not in output, output
