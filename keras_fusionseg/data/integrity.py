"""One container-level integrity check for encoded images, shared by the TFRecord writer and
every reader, so a file the writer accepts is never rejected later and the other way round.

PNG: the signature, then every chunk's length and CRC-32 up to `IEND` (a corrupted middle
fails its chunk's CRC). JPEG: start-of-image, the marker segments up to the first scan, then
an end-of-image marker somewhere after it. Bytes after the end marker are allowed: PIL and
TensorFlow decode such files, and cameras and editors append metadata there. GIF and BMP are
only recognised (the writer re-encodes them as PNG). Damage inside JPEG entropy-coded data is
invisible at this level; the TFRecord writer also decodes each image with TensorFlow, as the
reader will, so such a file is refused there, by name.
"""

import struct
import zlib

import numpy as np
import tensorflow as tf

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
JPEG_SOI = b"\xff\xd8"
# Markers without a length field: TEM, RST0-7, SOI, EOI.
_JPEG_STANDALONE = {0x01, *range(0xD0, 0xD8), 0xD8, 0xD9}


def image_problem(data):
    """What is wrong with encoded image bytes, or None if the container is intact.

    The answer starts with "Corrupt" (unknown format, damaged structure) or "Truncated" (the
    data ends before the image's end marker).
    """
    data = bytes(data)
    if data.startswith(PNG_SIGNATURE):
        return _png_problem(data)
    if data.startswith(JPEG_SOI + b"\xff"):
        return _jpeg_problem(data)
    if data.startswith((b"GIF87a", b"GIF89a")) or (data.startswith(b"BM") and len(data) >= 26):
        return None
    return "Corrupt: not a PNG, JPEG, GIF or BMP file (empty or unknown format)"


def _png_problem(data):
    position, first = len(PNG_SIGNATURE), True
    while True:
        if position + 8 > len(data):
            return "Truncated: the file ends before the PNG end chunk (IEND)"
        length, kind = struct.unpack(">I4s", data[position : position + 8])
        end = position + 12 + length
        if length > 0x7FFFFFFF or not kind.isalpha():
            return f"Corrupt: invalid PNG chunk header at byte {position}"
        if first and kind != b"IHDR":
            return "Corrupt: the PNG does not start with its IHDR chunk"
        if end > len(data):
            return "Truncated: the file ends inside a PNG chunk, before IEND"
        (crc,) = struct.unpack(">I", data[end - 4 : end])
        if zlib.crc32(data[position + 4 : end - 4]) != crc:
            return f"Corrupt: CRC mismatch in the PNG {kind.decode()} chunk at byte {position}"
        if kind == b"IEND":
            return None
        position, first = end, False


def _jpeg_problem(data):
    position = 2
    while True:
        while position < len(data) and data[position] == 0xFF and position + 1 < len(data):
            if data[position + 1] != 0xFF:
                break
            position += 1  # fill bytes before a marker
        if position + 2 > len(data):
            return "Truncated: the file ends before the JPEG end marker"
        if data[position] != 0xFF:
            return f"Corrupt: expected a JPEG marker at byte {position}"
        marker = data[position + 1]
        if marker == 0xD9:
            return "Corrupt: the JPEG ends before any image data"
        if marker in _JPEG_STANDALONE:
            position += 2
            continue
        if position + 4 > len(data):
            return "Truncated: the file ends inside a JPEG marker segment"
        (length,) = struct.unpack(">H", data[position + 2 : position + 4])
        if length < 2:
            return f"Corrupt: invalid JPEG segment length at byte {position}"
        position += 2 + length
        if position > len(data):
            return "Truncated: the file ends inside a JPEG marker segment"
        if marker == 0xDA:  # start of scan: entropy-coded data follows; 0xFF is stuffed
            if data.find(b"\xff\xd9", position) < 0:
                return "Truncated: the file ends before the JPEG end marker (EOI)"
            return None


def check_image_bytes(data, name, what="image"):
    """Raises `ValueError` naming `name` if `image_problem(data)` finds something."""
    problem = image_problem(data)
    if problem is not None:
        kind, _, detail = problem.partition(": ")
        raise ValueError(f"{kind} {what} {name!r}: {detail}.")


def graph_image_problem(encoded):
    """`image_problem` for a scalar string tensor inside `tf.data`: "" when intact."""

    def run(data):
        if isinstance(data, np.ndarray):  # a 0-d object array holding the bytes
            data = data.item()
        return np.bytes_((image_problem(data) or "").encode())

    problem = tf.numpy_function(run, [encoded], tf.string, stateful=False)
    problem.set_shape([])
    return problem
