r"""Fits the DUpsampling matrices (W, P, mean) on a dataset's training labels and saves a .npz.

PCA of r x r one-hot label patches (Tian et al., CVPR 2019, Sec. 3.1), streamed over the
split with `keras_fusionseg.layers.dupsampling_pca.fit_dupsampling`. The file is what the
`dunet` builder takes:

    python scripts/fit_dupsampling.py --source=camvid --data_dir=../shared/data/camvid \
        --ratio=16 --channels=64 --output=camvid_r16_c64.npz
    # then: models.build("dunet", num_classes=11, output_stride=16,
    #                    dupsampling_basis="camvid_r16_c64.npz")
"""

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from absl import app, flags  # noqa: E402

FLAGS = flags.FLAGS
flags.DEFINE_string("source", "camvid", "Dataset: registered name, folder, list file or TFRecord.")
flags.DEFINE_string("data_dir", None, "Folder of a registered dataset.")
flags.DEFINE_string("split", "train", "Split whose labels are fitted.")
flags.DEFINE_integer("num_classes", None, "Classes (default: from the dataset registry).")
flags.DEFINE_integer("ratio", 16, "Patch size r = the output stride DUpsampling undoes.")
flags.DEFINE_integer("channels", 64, "Components kept, C~ (64 for ResNet-50, 128 for Xception-65).")
flags.DEFINE_enum("ignore_mode", "zero", ["zero", "skip_patch"], "Treatment of void pixels.")
flags.DEFINE_integer("power_iterations", 2, "Extra passes of the randomized PCA.")
flags.DEFINE_string("output", None, "Output .npz path.")
flags.mark_flag_as_required("output")


def label_dataset(source, split, data_dir):
    """The labels of a split as a cached `tf.data.Dataset` (the PCA reads it several times)."""
    from keras_fusionseg import data

    records = data.load_split(source, split, data_dir=data_dir)
    return records.map(lambda record: record["label"]).cache()


def main(argv):
    del argv
    from keras_fusionseg import data
    from keras_fusionseg.layers.dupsampling_pca import fit_dupsampling

    num_classes = FLAGS.num_classes
    if num_classes is None:
        num_classes = data.get_dataset_info(FLAGS.source).num_classes
    basis = fit_dupsampling(
        label_dataset(FLAGS.source, FLAGS.split, FLAGS.data_dir),
        num_classes,
        FLAGS.ratio,
        FLAGS.channels,
        ignore_mode=FLAGS.ignore_mode,
        power_iterations=FLAGS.power_iterations,
    )
    basis.save(FLAGS.output)
    explained = basis.explained_variance.sum() / basis.total_variance
    print(
        f"W {basis.reconstruction.shape} from {basis.num_patches} patches; "
        f"explained variance {explained:.4f}; saved {FLAGS.output}"
    )


if __name__ == "__main__":
    app.run(main)
