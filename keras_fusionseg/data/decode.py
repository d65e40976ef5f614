"""Decoding encoded image/label pairs in the `tf.data` graph, with errors naming the file.

Decoding runs inside `tf.data` (parallel, no Python lock), so checks are graph asserts whose
message carries the file or record name: bad data fails with
`InvalidArgumentError: ... <what is wrong> ... <file name> ...`.
"""

import io

import numpy as np
import tensorflow as tf
from PIL import Image

from keras_fusionseg.data import integrity
from keras_fusionseg.data.registry import IGNORE_LABEL

_IMAGE_CHANNELS = (1, 3)


def _assert(condition, name, message, *values):
    """Graph assert whose error reads `<message> in <name>` followed by `values`."""
    text = tf.strings.join([message, " in ", name])
    return tf.debugging.Assert(condition, [text, *values], summarize=8)


def check_encoded_image(encoded, name, what):
    """Asserts `encoded` passes `integrity.image_problem` (the TFRecord writer's check too).

    A complete PNG (every chunk's CRC up to IEND) or JPEG (markers up to the scan, then an
    end-of-image marker), GIF or BMP; bytes after the end marker are fine. TF's decoders
    report truncated or corrupt data without the file name; this check names it.
    Returns `encoded` with the check as a control dependency.
    """
    problem = integrity.graph_image_problem(encoded)
    message = tf.strings.regex_replace(problem, "^(Corrupt|Truncated):", r"\1 " + what + ":")
    intact = _assert(tf.equal(problem, ""), name, message)
    with tf.control_dependencies([intact]):
        return tf.identity(encoded)


def decode_image(encoded, name):
    """Decodes an image (1 or 3 channels) to uint8 [H, W, C], naming `name` on bad data."""
    encoded = check_encoded_image(encoded, name, "image")
    image = tf.io.decode_image(encoded, channels=0, expand_animations=False)
    channels = tf.shape(image)[2]
    ok = _assert(
        tf.logical_or(tf.equal(channels, 1), tf.equal(channels, 3)),
        name,
        "Unexpected channel count in image (expected 1 for grayscale or 3 for RGB)",
        "channels:",
        channels,
    )
    with tf.control_dependencies([ok]):
        return tf.identity(image)


def _png_needs_pil(encoded):
    """True for a 16-bit or palette PNG: TensorFlow rescales 16-bit values to 8 bits (small
    class ids become 0) and expands a palette to colours, losing the indices."""
    padded = tf.strings.join([encoded, tf.constant(b"\0" * 26)])
    is_png = tf.equal(tf.strings.substr(padded, 0, 8), integrity.PNG_SIGNATURE)
    # IHDR is the first chunk: bit depth at byte 24, colour type at byte 25.
    header = tf.io.decode_raw(tf.strings.substr(padded, 24, 2), tf.uint8)
    return is_png & (tf.equal(header[0], 16) | tf.equal(header[1], 3))


def _pil_label(data):
    """Stored values of a 16-bit or palette PNG, as the TFRecord writer reads them (PIL)."""
    if isinstance(data, np.ndarray):  # a 0-d object array holding the bytes
        data = data.item()
    label = np.asarray(Image.open(io.BytesIO(data)))
    largest = np.int64(label.max()) if label.size else np.int64(0)
    if label.ndim == 2:
        label = label[..., None]
    return np.clip(label, 0, 255).astype(np.uint8), largest


def _decode_pil_label(encoded, name):
    label, largest = tf.numpy_function(_pil_label, [encoded], (tf.uint8, tf.int64), stateful=False)
    label.set_shape([None, None, None])
    fits = _assert(
        largest <= 255,
        name,
        "16-bit label has values above 255 (class ids must fit in 8 bits)",
        "largest value:",
        largest,
    )
    with tf.control_dependencies([fits]):
        return tf.identity(label)


def decode_label(encoded, name):
    """Decodes a one-channel label image of class ids to uint8 [H, W, 1].

    16-bit PNGs keep their values (an error names the file if one exceeds 255) and palette
    PNGs keep their indices, as in the TFRecord writer.
    """
    encoded = check_encoded_image(encoded, name, "label")
    label = tf.cond(
        _png_needs_pil(encoded),
        lambda: _decode_pil_label(encoded, name),
        lambda: tf.io.decode_image(encoded, channels=0, expand_animations=False),
    )
    channels = tf.shape(label)[2]
    ok = _assert(
        tf.equal(channels, 1),
        name,
        "Unexpected channel count in label (expected 1 channel of class ids or a palette "
        "PNG; convert colour labels to class ids first)",
        "channels:",
        channels,
    )
    with tf.control_dependencies([ok]):
        return tf.identity(label[..., :1])


def check_and_map_label(
    image,
    label,
    name,
    *,
    num_classes=None,
    label_map=None,
    ignore_label=IGNORE_LABEL,
    label_name=None,
):
    """Remaps stored label values to train ids, then checks size and value range.

    Args:
        image: uint8 [H, W, C].
        label: uint8 [H, W, 1] stored values.
        name: scalar string tensor naming the example in error messages.
        num_classes: int or None (no range check).
        label_map: optional 256-entry uint8 table, stored value -> train id.
        ignore_label: int, the one value allowed at or above `num_classes`.
        label_name: scalar string tensor naming the label file in value errors (default `name`).

    Returns:
        label uint8 [H, W, 1] of train ids.
    """
    image_hw, label_hw = tf.shape(image)[:2], tf.shape(label)[:2]
    same_size = _assert(
        tf.reduce_all(tf.equal(image_hw, label_hw)),
        name,
        "Label size differs from image size",
        "image (height, width):",
        image_hw,
        "label:",
        label_hw,
    )
    if label_map is not None:
        table = tf.constant(label_map, dtype=tf.uint8)
        label = tf.gather(table, tf.cast(label, tf.int32))
    checks = [same_size]
    if num_classes is not None:
        valid = tf.logical_or(label < num_classes, tf.equal(label, ignore_label))
        checks.append(
            _assert(
                tf.reduce_all(valid),
                name if label_name is None else label_name,
                f"Label value out of range (values must be < {num_classes} "
                f"or the ignore label {ignore_label})",
                "largest bad value:",
                tf.reduce_max(tf.where(valid, tf.zeros_like(label), label)),
            )
        )
    with tf.control_dependencies(checks):
        return tf.identity(label)


def decode_example(
    image_bytes,
    label_bytes,
    name,
    *,
    num_classes=None,
    label_map=None,
    ignore_label=IGNORE_LABEL,
    label_name=None,
):
    """Encoded image and label -> `{"image", "label", "filename"}`, checked.

    `name` names the example in errors; `label_name` (default `name`) names the label file
    in errors about the label alone.
    """
    image = decode_image(image_bytes, name)
    label = decode_label(label_bytes, name if label_name is None else label_name)
    label = check_and_map_label(
        image,
        label,
        name,
        num_classes=num_classes,
        label_map=label_map,
        ignore_label=ignore_label,
        label_name=label_name,
    )
    return {"image": image, "label": label, "filename": name}
