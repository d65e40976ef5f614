"""Fuzzing the TFRecord example decoder: random and mutated records never crash the process
or hang, and every failure is an error naming the shard and the record."""

import threading

import hypothesis
import numpy as np
import tensorflow as tf
from hypothesis import strategies as st

from keras_fusionseg import data
from keras_fusionseg.data import tfrecords

_SHARD = "fuzz-00000-of-00001.tfrecord"
_FUZZ = hypothesis.settings(
    max_examples=8,  # each example builds and runs a tf.data pipeline (about a second)
    deadline=None,  # a hang is caught by _read's timeout instead
    derandomize=True,
    database=None,
    # No shrinking phase: shrinking a failure re-runs pipelines for minutes.
    phases=[hypothesis.Phase.explicit, hypothesis.Phase.reuse, hypothesis.Phase.generate],
    suppress_health_check=list(hypothesis.HealthCheck),
)
_VALID = tfrecords.example_from_arrays(
    np.random.default_rng(0).integers(0, 256, (6, 7, 3), np.uint8),
    np.random.default_rng(1).integers(0, 3, (6, 7), np.uint8),
    "valid.png",
)
_TIMEOUT_SECONDS = 120


def _read(tmp_path_factory, records):
    """Reads `records` from one shard; a failure must be an error naming shard and record."""
    path = str(tmp_path_factory.mktemp("fuzz") / _SHARD)
    with tf.io.TFRecordWriter(path) as writer:
        for record in records:
            writer.write(record)
    outcome = {}

    def run():
        try:
            for _ in data.load_split(path, "train", num_classes=3):
                pass
            outcome["ok"] = True
        except BaseException as error:  # noqa: BLE001 - judged below, on the main thread
            outcome["error"] = error

    worker = threading.Thread(target=run, daemon=True)
    worker.start()
    worker.join(_TIMEOUT_SECONDS)
    assert not worker.is_alive(), f"reading {records!r} hangs"
    error = outcome.get("error")
    if error is None:
        return
    assert isinstance(error, tf.errors.InvalidArgumentError | ValueError), repr(error)
    message = getattr(error, "message", None) or str(error)
    assert f"{_SHARD} record " in message, message[-500:]


@_FUZZ
@hypothesis.example(record=b"\xf17N@\xc5<>8\xa0\x9b8\xb9\xa8\x0fD<@]\xb3r\x99\xcf\x06\xabdo")
@hypothesis.example(record=b"")
@hypothesis.given(record=st.binary(max_size=300))
def test_fuzz_random_records(tmp_path_factory, record):
    _read(tmp_path_factory, [record])


@_FUZZ
@hypothesis.given(
    edits=st.lists(
        st.tuples(st.integers(0, 10_000), st.binary(min_size=0, max_size=3)), min_size=1, max_size=4
    )
)
def test_fuzz_mutated_valid_example(tmp_path_factory, edits):
    record = bytearray(_VALID.SerializeToString())
    for position, replacement in edits:
        position %= len(record)
        record[position : position + 1] = replacement
    _read(tmp_path_factory, [_VALID.SerializeToString(), bytes(record)])


def _feature_maps():
    values = st.one_of(
        st.binary(max_size=40).map(tfrecords._bytes_feature),
        st.integers(-(2**40), 2**40).map(tfrecords._int_feature),
    )
    return st.dictionaries(st.sampled_from([*tfrecords._FEATURES, "other"]), values)


@_FUZZ
@hypothesis.example(
    features={
        tfrecords.IMAGE_FILENAME: tfrecords._bytes_feature(b"\xff\xfe not utf-8"),
        tfrecords.IMAGE_ENCODED: tfrecords._bytes_feature(b"\x89PNG broken"),
    }
)
@hypothesis.given(features=_feature_maps())
def test_fuzz_random_feature_maps(tmp_path_factory, features):
    example = tf.train.Example(features=tf.train.Features(feature=features))
    _read(tmp_path_factory, [example.SerializeToString()])


def test_record_that_is_not_an_example_is_named(tmp_path):
    path = tmp_path / "bad-00000-of-00001.tfrecord"
    with tf.io.TFRecordWriter(str(path)) as writer:
        writer.write(_VALID.SerializeToString())
        writer.write(b"\xf1 random bytes \xc5\x9b")
    dataset = data.load_split(str(path), "train", num_classes=3)
    iterator = iter(dataset)
    assert next(iterator)["filename"].numpy() == b"valid.png"
    try:
        next(iterator)
    except tf.errors.InvalidArgumentError as error:
        assert "not a tf.train.Example" in error.message
        assert "bad-00000-of-00001.tfrecord record 1" in error.message
    else:
        raise AssertionError("a record of random bytes was read without an error")
