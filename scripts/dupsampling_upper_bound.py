"""Label-reconstruction upper bound of DUpsampling vs bilinear (Tian et al., CVPR 2019, Table 1).

For each ratio r: fit W on the train split's labels, then on the validation split

- DUpsampling: every r x r one-hot patch is projected to C~ numbers with P and
  reconstructed with W and the mean; each pixel takes the argmax class;
- bilinear: the one-hot label is area-downsampled to ceil(H/r) x ceil(W/r) (the size of an
  output-stride-r feature map) and bilinearly upsampled back; argmax;

and reports the mIoU* of both against the true labels (void pixels not scored; classes
absent from both prediction and truth left out of the mean). Unlike the paper, which trains
a small CNN on the labels to reach these codes, this computes the oracle codes directly,
so the numbers are the ceilings the paper's trained networks approach.

    python scripts/dupsampling_upper_bound.py --source=camvid --data_dir=../shared/data/camvid
"""

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from absl import app, flags  # noqa: E402

FLAGS = flags.FLAGS
flags.DEFINE_string("source", "camvid", "Dataset: registered name, folder, list file or TFRecord.")
flags.DEFINE_string("data_dir", None, "Folder of a registered dataset.")
flags.DEFINE_string("train_split", "train", "Split W is fitted on.")
flags.DEFINE_string("val_split", "val", "Split the reconstructions are scored on.")
flags.DEFINE_integer("num_classes", None, "Classes (default: from the dataset registry).")
flags.DEFINE_list("ratios", ["32", "16"], "Ratios r (output strides).")
flags.DEFINE_list("channels", ["64"], "C~ values for DUpsampling.")
flags.DEFINE_enum("ignore_mode", "zero", ["zero", "skip_patch"], "Void pixels in the fit.")
flags.DEFINE_integer("ignore_label", 255, "Void label.")


def confusion(truth, prediction, num_classes, ignore_label):
    import numpy as np

    valid = truth != ignore_label
    index = truth[valid].astype(np.int64) * num_classes + prediction[valid]
    return np.bincount(index, minlength=num_classes**2).reshape(num_classes, num_classes)


def mean_iou(matrix):
    import numpy as np

    intersection = np.diag(matrix).astype(np.float64)
    union = matrix.sum(0) + matrix.sum(1) - intersection
    present = union > 0
    return float(np.mean(intersection[present] / union[present]))


def bilinear_reconstruction(label, ratio, num_classes, ignore_label):
    """Argmax of bilinear(area_downsample(one-hot label)); void pixels one-hot as zeros."""
    import numpy as np
    import tensorflow as tf

    h, w = label.shape
    onehot = (label[..., None] == np.arange(num_classes)).astype(np.float32)
    small = tf.image.resize(onehot[None], (-(-h // ratio), -(-w // ratio)), method="area")
    return tf.image.resize(small, (h, w), method="bilinear")[0].numpy().argmax(-1)


def main(argv):
    del argv

    from keras_fusionseg import data
    from keras_fusionseg.layers.dupsampling_pca import fit_dupsampling, reconstruct_labels

    num_classes = FLAGS.num_classes
    if num_classes is None:
        num_classes = data.get_dataset_info(FLAGS.source).num_classes

    def labels(split):
        records = data.load_split(FLAGS.source, split, data_dir=FLAGS.data_dir)
        return records.map(lambda record: record["label"]).cache()

    train = labels(FLAGS.train_split)
    val = [label[..., 0] for label in labels(FLAGS.val_split).as_numpy_iterator()]
    ignore = FLAGS.ignore_label
    rows = []
    for ratio in (int(r) for r in FLAGS.ratios):
        matrix = sum(
            confusion(
                t, bilinear_reconstruction(t, ratio, num_classes, ignore), num_classes, ignore
            )
            for t in val
        )
        rows.append((ratio, "bilinear", "-", mean_iou(matrix), None))
        for channels in (int(c) for c in FLAGS.channels):
            basis = fit_dupsampling(
                train, num_classes, ratio, channels, ignore_mode=FLAGS.ignore_mode
            )
            matrix = sum(
                confusion(t, reconstruct_labels(t, basis, ignore), num_classes, ignore) for t in val
            )
            explained = float(basis.explained_variance.sum() / basis.total_variance)
            rows.append((ratio, "DUpsampling", channels, mean_iou(matrix), explained))
        print(rows[-1], flush=True)
    print(
        f"\n{FLAGS.source}: W fitted on {FLAGS.train_split}, scored on {FLAGS.val_split} "
        f"({len(val)} labels), ignore_mode={FLAGS.ignore_mode}\n"
    )
    print("| output stride r | method | C~ | mIoU* (%) | train variance explained |")
    print("|---|---|---|---|---|")
    for ratio, method, channels, miou, explained in rows:
        share = "-" if explained is None else f"{100 * explained:.1f}%"
        print(f"| {ratio} | {method} | {channels} | {100 * miou:.2f} | {share} |")


if __name__ == "__main__":
    app.run(main)
