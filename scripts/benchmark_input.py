"""Measures training-pipeline throughput (images/s): CamVid TFRecords, full augmentation.

Writes CamVid train TFRecords to a temporary folder (or reuses --tfrecord_dir), then times
`training_pipeline` (random scale 0.5-2.0 step 0.25, pad, crop, flip, colour jitter) after
a warm-up. Example:
    python scripts/benchmark_input.py --data_dir=../shared/data/camvid
"""

import os
import resource
import tempfile
import time

from absl import app, flags

FLAGS = flags.FLAGS
flags.DEFINE_string("data_dir", "../shared/data/camvid", "CamVid folder (images/, labels/).")
flags.DEFINE_string("tfrecord_dir", None, "Reuse/keep TFRecords here (default: a temp dir).")
flags.DEFINE_integer("crop_size", 512, "Training crop size.")
flags.DEFINE_integer("batch_size", 8, "Batch size.")
flags.DEFINE_integer("num_batches", 40, "Timed batches.")
flags.DEFINE_integer("warmup_batches", 5, "Untimed batches first (fills the pipeline).")
flags.DEFINE_bool("cache", False, "Cache decoded images in memory.")


def _cpu_seconds():
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def measure(pattern):
    """(images/s, CPU ms per image) of the full training pipeline on the shards `pattern`."""
    from keras_fusionseg import data

    # Encoded records: the pipeline shuffles them and decodes after, as training does.
    ds = data.load_encoded_split(pattern, "train", num_classes=11)
    pipeline = data.training_pipeline(
        ds,
        crop_size=FLAGS.crop_size,
        batch_size=FLAGS.batch_size,
        seed=0,
        repeat=True,
        cache=FLAGS.cache,
    )
    iterator = iter(pipeline)
    for _ in range(FLAGS.warmup_batches):
        next(iterator)
    start, cpu_start = time.perf_counter(), _cpu_seconds()
    for _ in range(FLAGS.num_batches):
        next(iterator)
    elapsed, cpu = time.perf_counter() - start, _cpu_seconds() - cpu_start
    images = FLAGS.num_batches * FLAGS.batch_size
    return images / elapsed, 1000.0 * cpu / images


def main(argv):
    del argv
    from keras_fusionseg.data import sources, tfrecords

    with tempfile.TemporaryDirectory() as temp:
        folder = FLAGS.tfrecord_dir or temp
        output = os.path.join(folder, "camvid-train.tfrecord")
        pattern = os.path.join(folder, "camvid-train-*.tfrecord")
        if not tfrecords.glob_files_or_empty(pattern):
            examples = sources.examples_from_source("camvid", "train", data_dir=FLAGS.data_dir)
            tfrecords.write_tfrecords(examples, output, num_shards=4)
        rate, cpu_ms = measure(pattern)
    load = os.getloadavg()[0]
    # On a shared machine the wall-clock rate depends on the other jobs; CPU time per image
    # gives the rate the same cores would reach when idle (an upper bound).
    print(
        f"training pipeline: {rate:.1f} images/s (crop {FLAGS.crop_size}, batch "
        f"{FLAGS.batch_size}, {FLAGS.num_batches} batches, {os.cpu_count()} CPUs, "
        f"load average {load:.1f} at the end); {cpu_ms:.1f} ms CPU per image, "
        f"{1000.0 * os.cpu_count() / cpu_ms:.0f} images/s if all CPUs were free"
    )


if __name__ == "__main__":
    app.run(main)
