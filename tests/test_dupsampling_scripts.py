"""Smoke tests of scripts/fit_dupsampling.py and scripts/dupsampling_upper_bound.py."""

import numpy as np
import pytest
import tensorflow as tf
from absl import flags
from PIL import Image
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


def read_labels(folder, split):
    return [
        np.asarray(Image.open(path)) for path in sorted((folder / "labels" / split).glob("*.png"))
    ]


def np_mean_iou(truths, predictions, num_classes=3):
    """mIoU* in %: void (255) not scored, classes absent from truth and prediction left out."""
    matrix = np.zeros((num_classes, num_classes))
    for truth, prediction in zip(truths, predictions, strict=True):
        valid = truth != 255
        np.add.at(matrix, (truth[valid], prediction[valid]), 1)
    union = matrix.sum(0) + matrix.sum(1) - np.diag(matrix)
    return 100 * np.mean(np.diag(matrix)[union > 0] / union[union > 0])


def np_patches(label, r, num_classes=3):
    """(blocks, r*r*num_classes) one-hot r x r windows; void pixels all zero."""
    h, w = label.shape
    onehot = (label[..., None] == np.arange(num_classes)).astype("float64")
    blocks = onehot.reshape(h // r, r, w // r, r, num_classes).transpose(0, 2, 1, 3, 4)
    return blocks.reshape(-1, r * r * num_classes)


def test_upper_bound_script_on_a_folder(folder_dataset, capsys, load_script):
    script = load_script("dupsampling_upper_bound")
    run(
        script,
        ["x", f"--source={folder_dataset}", "--num_classes=3", "--ratios=4", "--channels=4,48"],
    )
    rows = {
        tuple(cells[1:3]): cells[3:]
        for cells in (
            [c.strip() for c in line.strip("|").split("|")]
            for line in capsys.readouterr().out.splitlines()
            if line.startswith("| 4 |")
        )
    }
    assert set(rows) == {("bilinear", "-"), ("DUpsampling", "4"), ("DUpsampling", "48")}
    val = read_labels(folder_dataset, "val")
    # Bilinear: 4x4 block means of the one-hot label (40x36 -> 10x9), resized back, argmax.
    onehots = [(t[..., None] == np.arange(3)).astype("float64") for t in val]
    blocks = [o.reshape(10, 4, 9, 4, 3).mean(axis=(1, 3)) for o in onehots]
    bilinear = [np_resize_bilinear(b[None], 40, 36)[0].argmax(-1) for b in blocks]
    assert float(rows[("bilinear", "-")][0]) == pytest.approx(np_mean_iou(val, bilinear), abs=0.006)
    # DUpsampling with C~ = 4: top 4 principal components of the train patches (centred).
    train = np.concatenate([np_patches(t, 4) for t in read_labels(folder_dataset, "train")])
    mean = train.mean(0)
    eigenvalues, vectors = np.linalg.eigh(np.cov(train, rowvar=False))
    w = vectors[:, ::-1][:, :4]
    reconstructed = []
    for t in val:
        patches = (np_patches(t, 4) - mean) @ w @ w.T + mean
        patches = patches.reshape(10, 9, 4, 4, 3).transpose(0, 2, 1, 3, 4).reshape(40, 36, 3)
        reconstructed.append(patches.argmax(-1))
    miou, explained = rows[("DUpsampling", "4")]
    assert float(miou) == pytest.approx(np_mean_iou(val, reconstructed), abs=0.006)
    share = 100 * eigenvalues[::-1][:4].sum() / eigenvalues.sum()
    assert float(explained.rstrip("%")) == pytest.approx(share, abs=0.06)
    assert rows[("DUpsampling", "48")][0] == "100.00"  # C~ = N = 4 * 4 * 3: exact
    assert float(rows[("bilinear", "-")][0]) < 100 and float(miou) < 100  # not vacuous


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
