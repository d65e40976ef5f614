"""Smoke tests of scripts/fit_dupsampling.py and scripts/dupsampling_upper_bound.py."""


import numpy as np
import pytest
import tensorflow as tf
from absl import flags
from test_deeplab_layers import np_resize_bilinear

from keras_fusionseg.layers.dupsampling_pca import load_dupsampling_basis


@pytest.fixture
def folder_dataset(tmp_path, rng):
    for split, count in (("train", 4), ("val", 2)):
        for kind in ("images", "labels"):
            (tmp_path / kind / split).mkdir(parents=True)
        for i in range(count):
            label = np.zeros((40, 36, 1), np.uint8)
            y, x = rng.integers(0, 20, 2)
            label[y : y + 15, x : x + 12] = rng.integers(1, 3)
            label[0, 0] = 255
            image = rng.integers(0, 255, (40, 36, 3), dtype=np.uint8)
            tf.io.write_file(str(tmp_path / "images" / split / f"{i}.png"), tf.io.encode_png(image))
            tf.io.write_file(str(tmp_path / "labels" / split / f"{i}.png"), tf.io.encode_png(label))
    (tmp_path / "classes.txt").write_text("a\nb\nc\n")
    return tmp_path


def run(module, argv):
    flags.FLAGS.unparse_flags()
    flags.FLAGS(argv)
    module.main([])


def test_upper_bound_script_on_a_folder(folder_dataset, capsys, load_script):
    script = load_script("dupsampling_upper_bound")
    run(
        script,
        ["x", f"--source={folder_dataset}", "--num_classes=3", "--ratios=8", "--channels=4,192"],
    )
    out = capsys.readouterr().out
    assert "| 8 | bilinear | - |" in out
    # C~ = N = 8 * 8 * 3: the reconstruction is exact
    assert "| 8 | DUpsampling | 192 | 100.00 |" in out


def test_upper_bound_helpers(load_script):
    script = load_script("dupsampling_upper_bound")
    truth = np.array([[0, 1], [1, 255]])
    matrix = script.confusion(truth, np.array([[0, 1], [0, 0]]), 2, 255)
    np.testing.assert_array_equal(matrix, [[1, 0], [1, 1]])
    assert script.mean_iou(matrix) == pytest.approx((1 / 2 + 1 / 2) / 2)
    label = np.zeros((33, 20), np.int64)
    label[:, 10:] = 1
    assert (script.bilinear_reconstruction(label, 1, 2, 255) == label).all()


def test_bilinear_reconstruction_at_ratio_4_matches_numpy(rng, load_script):
    # Ratio 1 is the identity; at ratio 4 the one-hot label is block-averaged (area) and
    # brought back bilinearly, which loses thin structures: compared with NumPy.
    script = load_script("dupsampling_upper_bound")
    label = rng.integers(0, 3, size=(16, 24))
    label[3:5, :] = 255
    onehot = (label[..., None] == np.arange(3)).astype("float64")
    blocks = onehot.reshape(4, 4, 6, 4, 3).mean(axis=(1, 3))
    expected = np_resize_bilinear(blocks[None], 16, 24)[0].argmax(-1)
    got = script.bilinear_reconstruction(label, 4, 3, 255)
    np.testing.assert_array_equal(got, expected)
    assert (got != np.where(label == 255, got, label)).any()  # not the identity


def test_fit_script_writes_a_basis(folder_dataset, tmp_path, load_script):
    script = load_script("fit_dupsampling")
    output = tmp_path / "basis.npz"
    run(
        script,
        [
            "x",
            f"--source={folder_dataset}",
            "--num_classes=3",
            "--ratio=8",
            "--channels=6",
            f"--output={output}",
        ],
    )
    basis = load_dupsampling_basis(output)
    assert basis.reconstruction.shape == (8 * 8 * 3, 6) and basis.ratio == 8
