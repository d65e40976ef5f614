"""Image integrity (one check in the TFRecord writer and every reader) and TFRecord shards."""

import io

import numpy as np
import pytest
import tensorflow as tf
from PIL import Image
from test_data_sources import _read_all, make_folder

from keras_fusionseg import data
from keras_fusionseg.data import integrity, sources, tfrecords


def _encode(array, fmt, **options):
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format=fmt, **options)
    return buffer.getvalue()


def _damaged_middle(encoded):
    damaged = bytearray(encoded)
    middle = len(damaged) // 2
    damaged[middle : middle + 8] = bytes(b ^ 0x5A for b in damaged[middle : middle + 8])
    return bytes(damaged)


def _variants(rng):
    """(name, bytes, problem prefix or None) for intact, trailing-byte and damaged files."""
    image = rng.integers(0, 256, (24, 32, 3), np.uint8)
    png, jpeg = _encode(image, "PNG"), _encode(image, "JPEG", quality=90)
    progressive = _encode(image, "JPEG", progressive=True)
    return [
        ("png", png, None),
        ("jpeg", jpeg, None),
        ("progressive jpeg", progressive, None),
        ("png + trailing bytes", png + b"\x00metadata appended by an editor", None),
        ("jpeg + trailing bytes", jpeg + b"\xff\xd8trailer", None),
        ("png cut short", png[:-20], "Truncated"),
        ("jpeg cut short", jpeg[:-50], "Truncated"),
        ("progressive jpeg cut short", progressive[: len(progressive) // 2], "Truncated"),
        ("png, damaged middle, end intact", _damaged_middle(png), "Corrupt"),
        ("empty", b"", "Corrupt"),
        ("text", b"hello, not an image", "Corrupt"),
    ]


def test_image_problem_has_no_false_positives_and_catches_damage(rng):
    for name, encoded, expected in _variants(rng):
        problem = integrity.image_problem(encoded)
        if expected is None:
            assert problem is None, (name, problem)
            # Both decoders the project uses accept what the check accepts.
            np.asarray(Image.open(io.BytesIO(encoded)))
            tf.io.decode_image(encoded, expand_animations=False)
        else:
            assert problem and problem.startswith(expected), (name, problem)


@pytest.mark.parametrize("index", range(11))
def test_writer_and_reader_agree_and_name_the_file(tmp_path, rng, index):
    name, encoded, expected = _variants(np.random.default_rng(0))[index]
    root = make_folder(tmp_path / "ds", rng, count=2, size=(24, 32))
    (root / "images/train/img1.png").unlink()
    suffix = "jpg" if "jpeg" in name else "png"
    path = root / f"images/train/img1.{suffix}"
    path.write_bytes(encoded)
    examples = sources.examples_from_source(str(root), "train")
    if expected is None:
        _read_all(str(root))  # the folder reader accepts it
        paths, count = tfrecords.write_tfrecords(examples, tmp_path / "out.tfrecord")
        assert count == 2
        _read_all(str(tmp_path / "out*.tfrecord"))  # and reads it back from the TFRecord
        return
    with pytest.raises(tf.errors.InvalidArgumentError, match=rf"(?s){expected} image.*img1"):
        _read_all(str(root))
    with pytest.raises(ValueError, match=rf"{expected} image .*img1\.{suffix}"):
        tfrecords.write_tfrecords(examples, tmp_path / "out.tfrecord")


def test_writer_refuses_jpeg_damaged_inside_by_name(tmp_path, rng):
    """Damage inside a JPEG's tables passes the container check; the writer decodes the image
    (PIL and TensorFlow, as the reader will), so the file is refused at write time, by name."""
    root = make_folder(tmp_path / "ds", rng, count=1, size=(64, 64))
    jpeg = bytearray(_encode(rng.integers(0, 256, (64, 64, 3), np.uint8), "JPEG", quality=95))
    table = jpeg.find(b"\xff\xc4")
    jpeg[table + 5 : table + 21] = b"\x10" * 16  # Huffman code counts: valid framing, bogus table
    (root / "images/train/img0.png").unlink()
    (root / "images/train/img0.jpg").write_bytes(bytes(jpeg))
    assert integrity.image_problem(bytes(jpeg)) is None
    with pytest.raises(ValueError, match=r"Corrupt .*img0\.jpg"):
        tfrecords.write_tfrecords(
            sources.examples_from_source(str(root), "train"), tmp_path / "o.tfrecord"
        )


@pytest.fixture
def shards(tmp_path, rng):
    root = make_folder(tmp_path / "ds", rng, count=4)
    paths, _ = tfrecords.write_tfrecords(
        sources.examples_from_source(str(root), "train"), tmp_path / "t.tfrecord", num_shards=2
    )
    return paths


def test_truncated_shard_is_named(shards):
    assert tfrecords.check_shard(shards[1]) == 2
    with open(shards[1], "rb+") as handle:
        handle.truncate(len(open(shards[1], "rb").read()) - 30)
    with pytest.raises(ValueError, match=r"Truncated TFRecord shard .*t-00001-of-00002.*record 1"):
        data.load_split(shards[0].replace("00000", "*"), "train")


def test_corrupt_shard_header_is_named(shards):
    raw = bytearray(open(shards[0], "rb").read())
    raw[3] ^= 0x40  # the first record's length
    open(shards[0], "wb").write(bytes(raw))
    with pytest.raises(ValueError, match=r"Corrupt TFRecord shard .*t-00000-of-00002.*record 0"):
        data.load_split(shards[0].replace("00000", "*"), "train")
