r"""Prints the parameter and multiply-add counts of a registered model.

Example (the DeepLabv3+ paper's Xception-65 model, 21 classes, 513x513, OS16):

    python scripts/model_info.py --model=deeplabv3plus --backbone=xception65

Model and backbone options are `key=value` pairs with Python literal values:

    python scripts/model_info.py --model=deeplabv3plus --backbone=resnet101 \
        --options="separable=True,aspp_rates=(6, 12, 18)" --backbone_options="multi_grid=(1, 2, 4)"
"""

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from absl import app, flags  # noqa: E402

FLAGS = flags.FLAGS
flags.DEFINE_string("model", "deeplabv3plus", "Registered model name.")
flags.DEFINE_string("backbone", None, "Backbone name (default: the model's).")
flags.DEFINE_string("input_size", "513", "Input size: 'S' or 'H,W'.")
flags.DEFINE_integer("num_classes", 21, "Number of classes.")
flags.DEFINE_integer("output_stride", 16, "Output stride (8, 16 or 32).")
flags.DEFINE_string("options", "", "Model options: comma-separated key=value (Python literals).")
flags.DEFINE_string("backbone_options", "", "Backbone options: comma-separated key=value.")
flags.DEFINE_bool(
    "count_dilation_padding",
    False,
    "Also count the MACs TensorFlow spends on the space-to-batch padding of stock Keras dilated "
    "convs (our layers are counted as native ops, without padding).",
)


def main(argv):
    del argv
    from keras_fusionseg import models
    from keras_fusionseg.utils import count_parameters, macs_by_op_type
    from keras_fusionseg.utils.cli_options import build_from_flags, parse_input_size

    height, width = parse_input_size(FLAGS.input_size)
    model = build_from_flags(FLAGS, height, width)
    params = count_parameters(model)
    macs = macs_by_op_type(
        model, (height, width), count_dilation_padding=FLAGS.count_dilation_padding
    )
    backbone = FLAGS.backbone or models.get_model_spec(FLAGS.model).default_backbone
    print(
        f"{FLAGS.model} on {backbone}, OS{FLAGS.output_stride}, {FLAGS.num_classes} classes, "
        f"{height}x{width}"
    )
    print(
        f"  parameters: {params['total']:,} total, {params['trainable']:,} trainable, "
        f"{params['non_trainable']:,} non-trainable"
    )
    for op_type, value in sorted(macs.items()):
        print(f"  MACs {op_type}: {value:,}")
    total = sum(macs.values())
    print(f"  MACs total: {total:,} ({total / 1e9:.2f}B)")


if __name__ == "__main__":
    app.run(main)
