"""Prints the parameter and multiply-add counts of a registered model.

Example (the DeepLabv3+ paper's Xception-65 model, 21 classes, 513x513, OS16):

    python scripts/model_info.py --model=deeplabv3plus --backbone=xception65

Model and backbone options are `key=value` pairs with Python literal values:

    python scripts/model_info.py --model=deeplabv3plus --backbone=resnet101 \
        --options="separable=True,aspp_rates=(6, 12, 18)" --backbone_options="multi_grid=(1, 2, 4)"
"""

import ast
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
    "Also count the MACs TensorFlow spends on the space-to-batch padding of dilated convs.",
)


def split_top_level(text, separator=","):
    """Splits on `separator` outside brackets, so "a=(1, 2),b=3" gives two items."""
    items, depth, current = [], 0, ""
    for char in text:
        depth += char in "([{"
        depth -= char in ")]}"
        if char == separator and depth == 0:
            items.append(current)
            current = ""
        else:
            current += char
    items.append(current)
    return [item.strip() for item in items if item.strip()]


def parse_options(text, flag_name="options"):
    """Parses 'k=v,k2=v2' (values are Python literals, else strings) into a dict."""
    options = {}
    for item in split_top_level(text):
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise ValueError(f"--{flag_name}: expected key=value, received {item!r}.")
        try:
            options[key.strip()] = ast.literal_eval(value.strip())
        except (ValueError, SyntaxError):
            options[key.strip()] = value.strip()
    return options


def parse_input_size(text):
    parts = [p for p in text.replace("x", ",").split(",") if p.strip()]
    try:
        size = tuple(int(p) for p in parts)
    except ValueError:
        size = ()
    if len(size) == 1:
        size = size * 2
    if len(size) != 2 or min(size) < 1:
        raise ValueError(
            f"--input_size must be 'S' or 'H,W' with positive ints, received {text!r}."
        )
    return size


def main(argv):
    del argv
    from keras_fusionseg import models
    from keras_fusionseg.utils import count_parameters, macs_by_op_type

    height, width = parse_input_size(FLAGS.input_size)
    model = models.build(
        FLAGS.model,
        num_classes=FLAGS.num_classes,
        input_shape=(height, width, 3),
        backbone=FLAGS.backbone,
        output_stride=FLAGS.output_stride,
        backbone_options=parse_options(FLAGS.backbone_options, "backbone_options"),
        **parse_options(FLAGS.options),
    )
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
