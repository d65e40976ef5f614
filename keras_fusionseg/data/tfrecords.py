"""Sharded TFRecords with the TF Model Garden segmentation feature keys.

Files are interchangeable with that ecosystem: `image/encoded`, `image/format`,
`image/height`, `image/width`, `image/filename`, `image/segmentation/class/encoded`,
`image/segmentation/class/format`. Shards are written under a temporary name and renamed
only when every shard is complete, so a failed run leaves no half-written shard.

This module knows the file format only; `data.sources` decides which files a source names
(`sources.examples_from_source` feeds `write_tfrecords`).
"""

import glob
import io
import os
import struct

import numpy as np
import tensorflow as tf
from PIL import Image

from keras_fusionseg.data import integrity
from keras_fusionseg.data.decode import _assert, decode_example, decode_image
from keras_fusionseg.data.registry import IGNORE_LABEL

IMAGE_ENCODED = "image/encoded"
IMAGE_FORMAT = "image/format"
IMAGE_HEIGHT = "image/height"
IMAGE_WIDTH = "image/width"
IMAGE_FILENAME = "image/filename"
LABEL_ENCODED = "image/segmentation/class/encoded"
LABEL_FORMAT = "image/segmentation/class/format"
REQUIRED_KEYS = (IMAGE_ENCODED, LABEL_ENCODED)

_FEATURES = {
    IMAGE_ENCODED: tf.io.FixedLenFeature([], tf.string, default_value=""),
    IMAGE_FORMAT: tf.io.FixedLenFeature([], tf.string, default_value=""),
    IMAGE_HEIGHT: tf.io.FixedLenFeature([], tf.int64, default_value=-1),
    IMAGE_WIDTH: tf.io.FixedLenFeature([], tf.int64, default_value=-1),
    IMAGE_FILENAME: tf.io.FixedLenFeature([], tf.string, default_value=""),
    LABEL_ENCODED: tf.io.FixedLenFeature([], tf.string, default_value=""),
    LABEL_FORMAT: tf.io.FixedLenFeature([], tf.string, default_value=""),
}


# ----------------------------------------------------------------------------------------
# Writing


def _bytes_feature(value):
    return tf.train.Feature(bytes_list=tf.train.BytesList(value=[value]))


def _int_feature(value):
    return tf.train.Feature(int64_list=tf.train.Int64List(value=[value]))


def make_example(image_bytes, image_format, label_bytes, height, width, filename):
    """A `tf.train.Example` with the Model Garden keys (label format is always png)."""
    return tf.train.Example(
        features=tf.train.Features(
            feature={
                IMAGE_ENCODED: _bytes_feature(image_bytes),
                IMAGE_FORMAT: _bytes_feature(image_format.encode()),
                IMAGE_HEIGHT: _int_feature(height),
                IMAGE_WIDTH: _int_feature(width),
                IMAGE_FILENAME: _bytes_feature(filename.encode()),
                LABEL_ENCODED: _bytes_feature(label_bytes),
                LABEL_FORMAT: _bytes_feature(b"png"),
            }
        )
    )


def _png_bytes(array):
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="PNG")
    return buffer.getvalue()


def _resized(array, long_side, resample):
    height, width = array.shape[:2]
    scale = long_side / max(height, width)
    if scale >= 1.0:
        return array
    size = (max(1, round(width * scale)), max(1, round(height * scale)))
    return np.asarray(Image.fromarray(array).resize(size, resample=resample))


def example_from_files(
    image_path,
    label_path,
    *,
    resize_long_side=None,
    num_classes=None,
    label_map=None,
    ignore_label=IGNORE_LABEL,
):
    """Reads, checks and (optionally) resizes one pair into a `tf.train.Example`.

    Without resizing, the image file's bytes are stored unchanged (pixels stay identical);
    labels are stored as one-channel PNG of train ids (`label_map` applied; palette PNGs
    keep their indices). Errors name
    the file: corrupt or truncated image, label size, label channels or values.
    """
    with open(image_path, "rb") as handle:
        image_bytes = handle.read()
    with open(label_path, "rb") as handle:
        label_bytes = handle.read()
    # The readers' own check, so that no file written here is refused when read back.
    integrity.check_image_bytes(image_bytes, image_path, "image")
    integrity.check_image_bytes(label_bytes, label_path, "label")
    try:
        image = Image.open(io.BytesIO(image_bytes))
        image_format = {"PNG": "png", "JPEG": "jpeg"}.get(image.format)
        image = np.asarray(image)
        label = np.asarray(Image.open(io.BytesIO(label_bytes)))
    except (OSError, SyntaxError, ValueError) as error:
        raise ValueError(
            f"Corrupt or truncated image in {image_path!r} / {label_path!r}: {error}"
        ) from error
    image_channels = 1 if image.ndim == 2 else image.shape[2]
    if image_channels not in (1, 3):
        raise ValueError(
            f"Unexpected channel count in image {image_path!r}: {image_channels} (expected 1 or 3)."
        )
    if label.ndim != 2:
        raise ValueError(
            f"Unexpected channel count in label {label_path!r}: {label.shape[2]} "
            "(expected one channel of class ids)."
        )
    if label.shape != image.shape[:2]:
        raise ValueError(
            f"Label size differs from image size: {label_path!r} is {label.shape[:2]}, "
            f"{image_path!r} is {image.shape[:2]}."
        )
    if label.size and (label.max() > 255 or label.min() < 0):
        raise ValueError(
            f"Label values outside 0..255 in {label_path!r} (largest {int(label.max())}): "
            "class ids must fit in 8 bits."
        )
    if label_map is not None:
        label = np.asarray(label_map, dtype=np.uint8)[label]
    if num_classes is not None:
        bad = np.unique(label[(label >= num_classes) & (label != ignore_label)])
        if bad.size:
            raise ValueError(
                f"Label value out of range in {label_path!r}: {bad.tolist()} "
                f"(values must be < {num_classes} or {ignore_label})."
            )
    label = label.astype(np.uint8)
    if not resize_long_side and image_format is not None:
        _check_decodes_like_the_reader(image_bytes, image_path)
    if resize_long_side:
        image = _resized(image, resize_long_side, Image.BILINEAR)
        label = _resized(label, resize_long_side, Image.NEAREST)
        image_bytes, image_format = _png_bytes(image), "png"
    elif image_format is None:  # GIF/BMP: store as PNG, the Model Garden readers' formats
        image_bytes, image_format = _png_bytes(image), "png"
    return make_example(
        image_bytes,
        image_format,
        _png_bytes(label),
        image.shape[0],
        image.shape[1],
        os.path.basename(image_path),
    )


def _check_decodes_like_the_reader(image_bytes, image_path):
    """Stored bytes must decode with TensorFlow as the reader will (PIL is more lenient with
    damaged JPEG data)."""
    try:
        decode_image(tf.constant(image_bytes), tf.constant(image_path))
    except tf.errors.InvalidArgumentError as error:
        raise ValueError(
            f"Corrupt image {image_path!r}: TensorFlow cannot decode it: {error.message}"
        ) from None


def example_from_arrays(image, label, filename, *, resize_long_side=None):
    """A `tf.train.Example` from uint8 arrays (image [H, W, C], label [H, W] or [H, W, 1]),
    shrunk when its long side exceeds `resize_long_side` (labels by nearest neighbour)."""
    image = np.asarray(image, dtype=np.uint8)
    label = np.asarray(label, dtype=np.uint8).reshape(image.shape[:2])
    if image.ndim == 3 and image.shape[2] == 1:
        image = image[..., 0]
    if resize_long_side:
        image = _resized(image, resize_long_side, Image.BILINEAR)
        label = _resized(label, resize_long_side, Image.NEAREST)
    return make_example(
        _png_bytes(image), "png", _png_bytes(label), image.shape[0], image.shape[1], filename
    )


def shard_paths(output, num_shards):
    """Final shard paths: `prefix-00000-of-00004.tfrecord` for output `prefix.tfrecord`."""
    root, ext = os.path.splitext(output)
    if ext not in (".tfrecord", ".tfrecords", ".record", ".tfrec"):
        root, ext = output, ""
    return [f"{root}-{i:05d}-of-{num_shards:05d}{ext}" for i in range(num_shards)]


def write_tfrecords(examples, output, num_shards=1):
    """Writes `tf.train.Example`s round-robin into `num_shards` shards, atomically.

    Args:
        examples: iterable of `tf.train.Example`.
        output: str, `prefix.tfrecord`; shards are `prefix-0000i-of-0000n.tfrecord`.
        num_shards: int.

    Returns:
        (list of shard paths, number of examples). Each shard is written to a temporary
        file and renamed once all shards are complete; on error no shard and no temporary
        file is left.
    """
    if not isinstance(num_shards, int) or num_shards < 1:
        raise ValueError(f"`num_shards` must be a positive integer, received {num_shards!r}.")
    paths = shard_paths(os.fspath(output), num_shards)
    os.makedirs(os.path.dirname(os.path.abspath(paths[0])), exist_ok=True)
    temporary = [f"{path}.incomplete-{os.getpid()}" for path in paths]
    writers = [tf.io.TFRecordWriter(path) for path in temporary]
    count = 0
    try:
        for count, example in enumerate(examples, start=1):
            writers[(count - 1) % num_shards].write(example.SerializeToString())
        if count == 0:
            raise ValueError(f"No examples to write to {output!r} (empty split).")
        for writer in writers:
            writer.close()
        for temp, path in zip(temporary, paths, strict=True):
            os.replace(temp, path)
    finally:
        for writer, temp in zip(writers, temporary, strict=True):
            writer.close()
            if os.path.exists(temp):
                os.remove(temp)
    return paths, count


# ----------------------------------------------------------------------------------------
# Reading


def glob_files_or_empty(pattern):
    """Sorted files matching `pattern` (a path or a glob)."""
    files = sorted(glob.glob(pattern)) if any(c in pattern for c in "*?[") else [pattern]
    return [path for path in files if os.path.isfile(path)]


def glob_files(pattern):
    """Sorted files matching `pattern`, an error naming the pattern when there are none."""
    files = glob_files_or_empty(pattern)
    if not files:
        raise ValueError(f"No TFRecord files match {pattern!r} (empty split).")
    return files


def _crc32c_table():
    table = []
    for byte in range(256):
        crc = byte
        for _ in range(8):
            crc = (crc >> 1) ^ (0x82F63B78 if crc & 1 else 0)
        table.append(crc)
    return table


_CRC32C = _crc32c_table()


def _masked_crc32c(data):
    """The TFRecord framing checksum: CRC-32C (Castagnoli), rotated and offset."""
    crc = 0xFFFFFFFF
    for byte in data:
        crc = _CRC32C[(crc ^ byte) & 0xFF] ^ (crc >> 8)
    crc ^= 0xFFFFFFFF
    return (((crc >> 15) | (crc << 17)) + 0xA282EAD8) & 0xFFFFFFFF


def check_shard(path):
    """Walks a TFRecord file's record headers; a truncated or corrupt one raises naming the
    shard, the record index and the byte offset (TensorFlow's own `DataLossError` names none).

    Reads 12 bytes per record (length and its checksum) and skips the payload, so it costs
    little next to reading the data. Returns the number of records.
    """
    size = os.path.getsize(path)
    offset = index = 0
    with open(path, "rb") as handle:
        while offset < size:
            header = handle.read(12)
            where = f"record {index} at byte {offset} of {size}"
            if len(header) < 12:
                raise ValueError(f"Truncated TFRecord shard {path!r}: {where} is cut short.")
            (length,) = struct.unpack("<Q", header[:8])
            (checksum,) = struct.unpack("<I", header[8:])
            if _masked_crc32c(header[:8]) != checksum:
                raise ValueError(
                    f"Corrupt TFRecord shard {path!r}: {where} has a damaged length header."
                )
            offset += 12 + length + 4
            if offset > size:
                raise ValueError(
                    f"Truncated TFRecord shard {path!r}: {where} needs {length} bytes, past "
                    "the end of the file."
                )
            handle.seek(offset)
            index += 1
    return index


def _parsed_or_flagged(path, index, record):
    """`(path, index, parsed, features)`: `parsed` is False, features empty, when `record`
    is not an Example with the expected feature types.

    TensorFlow's parse error quotes the raw record bytes, names no shard and can fail to
    decode as UTF-8 in Python; parsing inside a one-element dataset with `ignore_errors`
    swallows only that parse (never the shard reader's own errors), and `decode` turns the
    flag into an error naming the shard and record.
    """
    empty = {key: tf.constant(spec.default_value, spec.dtype) for key, spec in _FEATURES.items()}
    parsed = (
        tf.data.Dataset.from_tensors(record)
        .map(lambda r: (True, tf.io.parse_single_example(r, _FEATURES)))
        .ignore_errors()
    )
    fallback = tf.data.Dataset.from_tensors((False, empty))
    return (
        parsed.concatenate(fallback).take(1).map(lambda ok, features: (path, index, ok, features))
    )


def tfrecord_dataset(pattern, *, num_classes=None, label_map=None, ignore_label=IGNORE_LABEL):
    """Lazily decoded dataset of Model Garden segmentation TFRecords.

    Shards are interleaved one record at a time in file order, which restores the order
    `write_tfrecords` received the examples in. Every shard's record framing is checked
    first (`check_shard`), which also counts the records: the dataset's cardinality is known.
    Errors name the shard, the record index and the stored file name; a record that is not a
    `tf.train.Example` with these feature types, or one without `image/encoded` or
    `image/segmentation/class/encoded`, is an error.
    """
    records, decode = tfrecord_records(
        pattern, num_classes=num_classes, label_map=label_map, ignore_label=ignore_label
    )
    return records.map(decode, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)


def tfrecord_records(pattern, *, num_classes=None, label_map=None, ignore_label=IGNORE_LABEL):
    """`(records, decode)`: the parsed records of `tfrecord_dataset` and the function decoding
    one of them (`records.map(decode)` is `tfrecord_dataset`). Holding records instead of
    decoded images, a shuffle buffer costs little (`data.sources.EncodedSplit`)."""
    files = glob_files(os.fspath(pattern))
    count = sum(check_shard(path) for path in files)
    records = (
        tf.data.Dataset.from_tensor_slices(files)
        .interleave(
            lambda path: (
                tf.data.TFRecordDataset(path)
                .enumerate()
                .map(lambda index, record: (path, index, record))
                .flat_map(_parsed_or_flagged)
            ),
            cycle_length=len(files),
            block_length=1,
            num_parallel_calls=min(len(files), 4) if len(files) > 1 else None,
            deterministic=True if len(files) > 1 else None,
        )
        .apply(tf.data.experimental.assert_cardinality(count))
    )

    def decode(path, index, parsed, features):
        # The stored file name is arbitrary bytes; an error message must stay valid UTF-8.
        filename = tf.strings.unicode_transcode(
            features[IMAGE_FILENAME], "UTF-8", "UTF-8", errors="replace"
        )
        name = tf.strings.join([path, " record ", tf.strings.as_string(index), " (", filename, ")"])
        checks = [
            _assert(
                parsed,
                tf.strings.join([path, " record ", tf.strings.as_string(index)]),
                "TFRecord record is not a tf.train.Example with the segmentation features",
            )
        ]
        with tf.control_dependencies(checks):
            features = {key: tf.identity(value) for key, value in features.items()}
        checks = [
            _assert(
                tf.strings.length(features[key]) > 0,
                name,
                f"TFRecord example lacks the required key {key}",
            )
            for key in REQUIRED_KEYS
        ]
        with tf.control_dependencies(checks):
            image_bytes = tf.identity(features[IMAGE_ENCODED])
        example = decode_example(
            image_bytes,
            features[LABEL_ENCODED],
            name,
            num_classes=num_classes,
            label_map=label_map,
            ignore_label=ignore_label,
        )
        stored = tf.stack([features[IMAGE_HEIGHT], features[IMAGE_WIDTH]])
        actual = tf.cast(tf.shape(example["image"])[:2], tf.int64)
        size_ok = _assert(
            tf.reduce_all((stored < 0) | tf.equal(stored, actual)),
            name,
            "Image size differs from image/height, image/width",
            "stored:",
            stored,
            "decoded:",
            actual,
        )
        with tf.control_dependencies([size_ok]):
            example["image"] = tf.identity(example["image"])
        example["filename"] = features[IMAGE_FILENAME]
        return example

    return records, decode
