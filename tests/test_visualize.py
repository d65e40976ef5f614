"""Figures for people: the labelled confusion matrix, transparent void in overlays, training
curves written during `fit`, and the fallbacks without matplotlib."""

import csv
import sys

import keras
import numpy as np
import pytest
from PIL import Image

from keras_fusionseg.evaluation import ConfusionMatrixMetric, figures, write_reports
from keras_fusionseg.export.visualize import add_legend, overlay
from keras_fusionseg.training.callbacks import PredictionOverlays, TrainingCurves

NAMES = ["background", "rectangle", "circle", "ring", "triangle", "ellipse"]


def _results(confusion):
    return {"class_names": NAMES, "confusion": np.asarray(confusion), "mean_iou": 0.5}


def _confusion():
    confusion = np.diag([900.0, 300, 200, 150, 100, 50])
    confusion[4, 1] = 100  # triangle pixels predicted as rectangle: row share 0.5
    confusion[3] = 0  # a class absent from the data
    return confusion


def _texts(figure):
    return [t.get_text() for t in figure.findobj(lambda a: hasattr(a, "get_text"))]


def test_confusion_figure_has_names_row_shares_and_colour_bar(tmp_path):
    pytest.importorskip("matplotlib")
    figure = figures.confusion_matrix_figure(_confusion(), NAMES)
    texts = _texts(figure)
    for name in NAMES:  # columns (predicted) and rows (true, with pixel counts)
        assert name in texts
    assert "triangle (200)" in texts and "ring (0)" in texts
    matrix, colour_bar = figure.axes
    cells = [t.get_text() for t in matrix.texts]
    assert cells.count("0.50") == 2 and cells.count("1.00") == 4  # triangle row: 0.5 + 0.5
    assert len(cells) == 6  # zero cells and the absent class's row stay blank
    assert colour_bar.get_ylabel() == "share of the true class"
    assert colour_bar.get_ylim() == (0.0, 1.0)

    write_reports(_results(_confusion()), tmp_path)
    picture = Image.open(tmp_path / "confusion_matrix.png")
    assert picture.mode == "RGB" and picture.width >= 500 and picture.height >= 450, picture


def test_confusion_png_without_matplotlib_is_the_heat_map(tmp_path, monkeypatch, caplog):
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # `import matplotlib` raises
    assert not figures.matplotlib_available()
    with caplog.at_level("WARNING"):
        write_reports(_results(_confusion()), tmp_path)
    picture = np.asarray(Image.open(tmp_path / "confusion_matrix.png"))
    assert picture.shape == (6 * 16, 6 * 16, 3)
    messages = [r.getMessage() for r in caplog.records if "matplotlib" in r.getMessage()]
    assert len(messages) == 1 and "keras_fusionseg[plot]" in messages[0]
    assert "\n" not in messages[0]


def test_overlay_leaves_void_and_black_background_pixels_untouched(rng):
    image = rng.integers(0, 256, (6, 7, 3), dtype=np.uint8)
    palette = np.array([[0, 0, 0], [255, 0, 0], [0, 0, 255]], np.uint8)  # 0: black background
    ids = rng.integers(0, 3, (6, 7))
    ids[0, :] = 255  # ignore label
    ids[1, :] = -1
    blended = overlay(image, ids, palette, alpha=0.5)
    void = (ids < 0) | (ids > 2)
    np.testing.assert_array_equal(blended[void], image[void])
    np.testing.assert_array_equal(blended[ids == 0], image[ids == 0])
    red = ids == 1
    expected = np.round(0.5 * image[red].astype(np.float32) + 0.5 * palette[1])
    np.testing.assert_array_equal(blended[red], expected)
    # Asked for, black is drawn like any colour (halves the image).
    dark = overlay(image, ids, palette, alpha=0.5, clear_black=False)
    np.testing.assert_array_equal(dark[ids == 0], np.round(image[ids == 0] * 0.5))
    np.testing.assert_array_equal(dark[void], image[void])
    with pytest.raises(ValueError, match="height and width"):
        overlay(image, ids[:3], palette)


def test_tensorboard_overlays_keep_void_label_pixels(rng, tmp_path):
    images = rng.uniform(0, 255, (2, 8, 8, 3)).round().astype(np.float32)
    labels = rng.integers(1, 3, (2, 8, 8))
    labels[:, :3] = 255
    inputs = keras.Input((8, 8, 3))
    model = keras.Model(inputs, keras.layers.Conv2D(3, 1)(inputs))
    palette = np.array([[0, 0, 0], [255, 0, 0], [0, 255, 0]], np.uint8)
    callback = PredictionOverlays(images, labels, palette, str(tmp_path), ignore_label=255)
    callback.set_model(model)
    rows = callback.overlays()
    assert rows.shape == (2, 8, 24, 3) and rows.dtype == np.uint8
    label_overlays = rows[:, :, 16:]
    np.testing.assert_array_equal(label_overlays[:, :3], images[:, :3].astype(np.uint8))
    assert not np.array_equal(label_overlays[:, 3:], images[:, 3:].astype(np.uint8))


def test_overlays_png_holds_the_tensorboard_rows(rng, tmp_path):
    images = rng.uniform(0, 255, (2, 8, 8, 3)).round().astype(np.float32)
    labels = rng.integers(0, 3, (2, 8, 8))
    inputs = keras.Input((8, 8, 3))
    model = keras.Model(inputs, keras.layers.Conv2D(3, 1)(inputs))
    palette = np.array([[0, 0, 0], [255, 0, 0], [0, 255, 0]], np.uint8)
    png = tmp_path / "validation_overlays.png"
    callback = PredictionOverlays(
        images, labels, palette, str(tmp_path / "logs"), png_path=str(png)
    )
    callback.set_model(model)
    callback.on_epoch_end(0)
    picture = np.asarray(Image.open(png))
    np.testing.assert_array_equal(picture, np.concatenate(list(callback.overlays()), axis=0))
    assert [p.name for p in tmp_path.iterdir() if p.suffix == ".png"] == [png.name]


def _fit_with_curves(tmp_path, epochs, validation_freq=2, initial_epoch=0, model=None):
    rng = np.random.default_rng(1)
    images = rng.uniform(0, 255, (8, 8, 8, 3)).astype(np.float32)
    labels = (images[..., 0] > 127).astype(np.int32)
    if model is None:
        inputs = keras.Input((8, 8, 3))
        x = keras.layers.Rescaling(1 / 255.0)(inputs)
        model = keras.Model(inputs, keras.layers.Conv2D(2, 1)(x))
        model.compile(
            optimizer=keras.optimizers.Adam(0.05),
            loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
            metrics=[ConfusionMatrixMetric(2, name="mean_iou")],
        )
    callback = TrainingCurves(str(tmp_path))
    model.fit(
        images,
        labels,
        batch_size=4,
        epochs=epochs,
        initial_epoch=initial_epoch,
        validation_data=(images, labels),
        validation_freq=validation_freq,
        callbacks=[callback],
        verbose=0,
    )
    return model, callback


def test_training_curves_csv_and_png_per_validation(tmp_path):
    pytest.importorskip("matplotlib")
    model, callback = _fit_with_curves(tmp_path, epochs=4)
    with open(tmp_path / "training_curves.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert [int(r["step"]) for r in rows] == [2, 4, 6, 8]
    assert [bool(r["val_mean_iou"]) for r in rows] == [False, True, False, True]
    assert all(float(r["loss"]) > 0 for r in rows)
    width, height = Image.open(tmp_path / "training_curves.png").size
    assert width >= 600 and height >= 300

    figure = figures.training_curves_figure(callback.rows)
    loss_axes, miou_axes = figure.axes
    np.testing.assert_array_equal(loss_axes.lines[0].get_xdata(), [2, 4, 6, 8])
    np.testing.assert_array_equal(miou_axes.lines[0].get_xdata(), [4, 8])
    best = max(float(r["val_mean_iou"]) for r in rows if r["val_mean_iou"])
    assert f"best {best:.3f}" in _texts(figure)

    # A resumed run (optimizer back at step 4) drops the rows past it and appends new ones.
    model.optimizer.iterations.assign(4)
    _fit_with_curves(tmp_path, epochs=3, initial_epoch=2, validation_freq=1, model=model)
    steps = [r["step"] for r in figures.read_curve_rows(tmp_path / "training_curves.csv")]
    assert steps == [2, 4, 6]


def test_training_curves_without_matplotlib_keep_the_csv(tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    _fit_with_curves(tmp_path, epochs=2)
    assert (tmp_path / "training_curves.csv").exists()
    assert not (tmp_path / "training_curves.png").exists()
    printed = [line for line in capsys.readouterr().out.splitlines() if "matplotlib" in line]
    assert len(printed) == 1 and "keras_fusionseg[plot]" in printed[0]


def test_legend_draws_black_classes_transparent_as_overlays_do():
    palette = np.array([[0, 0, 0], [255, 0, 0]], np.uint8)  # 0: black background
    image = np.full((40, 30, 3), 90, np.uint8)
    swatch = 12

    def interiors(picture):  # inside the outline of each row's swatch (add_legend's layout)
        x = 30 + 4
        return [picture[y + 1 : y + swatch, x + 1 : x + swatch] for y in (4, 4 + swatch + 4)]

    background, road = interiors(add_legend(image, ["background", "road"], palette))
    assert not (background == 0).all(-1).any()  # no black pixel: a checkerboard
    assert {tuple(c) for c in background.reshape(-1, 3)} == {(187, 187, 187), (255, 255, 255)}
    assert (road == [255, 0, 0]).all()
    dark, _ = interiors(add_legend(image, ["background", "road"], palette, clear_black=False))
    assert (dark == 0).all()
