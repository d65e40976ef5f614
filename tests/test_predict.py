"""predict: files/globs/folders in, label PNGs and legend overlays out, from all three forms."""

import numpy as np
import pytest
from export_helpers import tiny_segmenter
from PIL import Image

from keras_fusionseg.export import convert_to_tflite, export_saved_model, load_segmenter
from keras_fusionseg.export import predict_files as pf
from keras_fusionseg.export.visualize import add_legend, colorize, default_palette, overlay


@pytest.fixture(scope="module")
def shipped(tmp_path_factory):
    """The same tiny model as .keras, SavedModel and .tflite, plus a folder of images."""
    root = tmp_path_factory.mktemp("predict")
    model = tiny_segmenter(num_classes=3)
    model.save(root / "model.keras")
    export_saved_model(model, root / "sm", signatures=("serving_default",))
    (root / "model.tflite").write_bytes(convert_to_tflite(model))
    images = root / "images"
    images.mkdir()
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 256, (40, 52, 3), dtype=np.uint8)).save(images / "a.png")
    Image.fromarray(rng.integers(0, 256, (30, 30), dtype=np.uint8)).save(images / "b.png")  # grey
    Image.fromarray(rng.integers(0, 256, (24, 36, 3), dtype=np.uint8)).save(images / "c.jpg")
    (images / "notes.txt").write_text("not an image")
    return root


def test_list_image_files(shipped):
    folder = shipped / "images"
    assert [p.rsplit("/", 1)[1] for p in pf.list_image_files([folder])] == [
        "a.png",
        "b.png",
        "c.jpg",
    ]
    assert len(pf.list_image_files([str(folder / "*.png"), str(folder / "a.png")])) == 2
    with pytest.raises(ValueError, match="matches no image"):
        pf.list_image_files([str(folder / "*.gif")])


@pytest.mark.parametrize("form", ["model.keras", "sm", "model.tflite"])
def test_predict_files_from_every_form(shipped, tmp_path, form):
    segmenter = load_segmenter(shipped / form)
    files = pf.list_image_files([shipped / "images"])
    names, palette = pf.class_names_and_palette(None, num_classes=3)
    written = pf.predict_files(
        segmenter, files, tmp_path, class_names=names, palette=palette, progress=True
    )
    assert len(written) == 3
    reference = load_segmenter(shipped / "model.keras")
    for path, (label_path, overlay_path) in zip(files, written, strict=True):
        image = pf.read_image(path, 3)
        label = np.asarray(Image.open(label_path))
        assert label.shape == image.shape[:2] and label.dtype == np.uint8
        agreement = (label == reference.class_ids(image)).mean()
        assert agreement > 0.99, (form, path, agreement)  # fp32 TFLite may flip near-ties
        picture = np.asarray(Image.open(overlay_path))
        assert picture.shape[0] >= image.shape[0] and picture.shape[1] > image.shape[1]


def test_dataset_names_and_palette_from_workdir_config(tmp_path):
    (tmp_path / "checkpoints").mkdir()
    (tmp_path / "config.json").write_text('{"data": {"name": "camvid"}}')
    assert pf.dataset_name_for(tmp_path / "checkpoints" / "best.keras") == "camvid"
    names, palette = pf.class_names_and_palette("camvid")
    assert len(names) == len(palette) == 11
    assert pf.dataset_name_for(tmp_path / "elsewhere" / "x" / "y") is None


def test_colorize_overlay_and_legend():
    palette = np.array([[0, 0, 0], [255, 0, 0], [0, 255, 0]], np.uint8)
    ids = np.array([[0, 1], [2, 7]])
    colours = colorize(ids, palette)
    np.testing.assert_array_equal(colours[0, 1], [255, 0, 0])
    np.testing.assert_array_equal(colours[1, 1], [0, 0, 0])  # outside the palette
    image = np.full((2, 2, 3), 100, np.uint8)
    blended = overlay(image, ids, palette, alpha=0.25)
    np.testing.assert_array_equal(blended[0, 1], np.round([0.75 * 100 + 0.25 * 255, 75, 75]))
    with pytest.raises(ValueError, match="alpha"):
        overlay(image, ids, palette, alpha=2)
    with_legend = add_legend(np.zeros((10, 10, 3), np.uint8), ["bg", "road", "sky"], palette, ids)
    assert with_legend.shape[0] >= 3 * 16 and with_legend.shape[1] > 10
    assert default_palette(3).shape == (3, 3)


def test_load_segmenter_errors(shipped, tmp_path):
    with pytest.raises(ValueError, match="does not exist"):
        load_segmenter(tmp_path / "missing.keras")
    with pytest.raises(ValueError, match="baked in"):
        load_segmenter(shipped / "sm", size_divisor=16)
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"nope")
    with pytest.raises(ValueError, match="bad.png"):
        pf.read_image(bad, 3)
