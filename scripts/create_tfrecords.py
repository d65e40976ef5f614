r"""Writes one split of a segmentation dataset as sharded TFRecords (TF Model Garden keys).

Example:
    python scripts/create_tfrecords.py --source=camvid --data_dir=../shared/data/camvid \
        --split=train --output=/tmp/camvid/train.tfrecord --num_shards=4

Shards are `train-00000-of-00004.tfrecord`, ...; read them back with
`keras_fusionseg.data.load_split("/tmp/camvid/train-*.tfrecord", "train")`. A progress bar
counts the examples written, against the total for file and TFRecord sources.
"""

import os
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from absl import app, flags  # noqa: E402

FLAGS = flags.FLAGS
flags.DEFINE_string(
    "source",
    None,
    "A registered dataset name (with --data_dir), a folder, a list file, 'synthetic_shapes' "
    "or 'tfds:<name>'.",
)
flags.DEFINE_string("split", "train", "Split to convert.")
flags.DEFINE_string("output", None, "Output path `prefix.tfrecord`; shards get -0000i-of-0000n.")
flags.DEFINE_integer("num_shards", 1, "Number of shards.")
flags.DEFINE_integer(
    "resize_long_side", None, "Shrink images whose long side exceeds this (labels: nearest)."
)
flags.DEFINE_string("data_dir", None, "Folder of a registered dataset, or the TFDS data dir.")
flags.DEFINE_integer("num_classes", None, "Check label values (< num_classes or 255).")
flags.mark_flags_as_required(["source", "output"])


def with_progress(examples, progress):
    """Yields `examples`, counting each on `progress` (a `keras.utils.Progbar`) once written."""
    count = 0
    for count, example in enumerate(examples, start=1):
        yield example
        progress.update(count)
    if progress.target is None:  # a bar with a target closes itself when it reaches it
        progress.update(count, finalize=True)


def known_total(resolved):
    """The number of examples of a `sources.ResolvedSource` when known without reading them."""
    if resolved.pairs is not None:
        return len(resolved.pairs)
    if resolved.kind == "tfrecord":
        count = int(resolved.encoded().records.cardinality())
        return count if count >= 0 else None
    return None


def main(argv):
    del argv
    import keras  # imported here: `--help` answers without TensorFlow

    from keras_fusionseg.data import sources, tfrecords

    start = time.time()
    resolved = sources.resolve_source(
        FLAGS.source, FLAGS.split, data_dir=FLAGS.data_dir, num_classes=FLAGS.num_classes
    )
    examples = sources.examples_from_source(
        FLAGS.source,
        FLAGS.split,
        data_dir=FLAGS.data_dir,
        resize_long_side=FLAGS.resize_long_side,
        num_classes=FLAGS.num_classes,
    )
    # A terminal shows a live line; a log file gets one line every 10 s at most.
    progress = keras.utils.Progbar(
        known_total(resolved), unit_name="example", interval=0.5 if sys.stdout.isatty() else 10.0
    )
    examples = with_progress(examples, progress)
    paths, count = tfrecords.write_tfrecords(examples, FLAGS.output, FLAGS.num_shards)
    print(
        f"Wrote {count} examples to {len(paths)} shards ({paths[0]} ...) "
        f"in {time.time() - start:.1f}s."
    )


if __name__ == "__main__":
    app.run(main)
