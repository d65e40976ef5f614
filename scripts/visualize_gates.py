r"""Writes the GFF gate maps of an image as PNGs, one per level (GFF paper Fig. 6/7).

Builds `gffnet` (or loads a saved `.keras` model), runs the image through it and saves
`<output_dir>/<image stem>_G<l>.png` for l = 1..L: the gate map of level l (the channel mean
for per-channel gates), resized to the image size, 0 -> black, 1 -> white; plus the image
itself for reference. Bright pixels send information to the other levels, dark ones receive.

    python scripts/visualize_gates.py --image=photo.png --model=trained_gffnet.keras \
        --output_dir=/tmp/gates
    python scripts/visualize_gates.py --image=photo.png --weights=gffnet.weights.h5 \
        --num_classes=11 --backbone_options="use_bias=False"
"""

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from absl import app, flags  # noqa: E402

FLAGS = flags.FLAGS
flags.DEFINE_string("image", None, "Image file (PNG, JPEG, BMP or GIF).")
flags.DEFINE_string("output_dir", "gates", "Folder for the PNGs.")
flags.DEFINE_string("model", None, "A saved `.keras` model with a GatedFullyFusion layer.")
flags.DEFINE_string("layer", "gff", "Name of the GatedFullyFusion layer.")
flags.DEFINE_string("weights", None, "Whole-model `.weights.h5` for a `gffnet` built here.")
flags.DEFINE_integer("num_classes", 19, "Classes of the `gffnet` built here.")
flags.DEFINE_string("backbone", None, "Backbone of the `gffnet` built here (default: its own).")
flags.DEFINE_string("options", "", "gffnet options: comma-separated key=value.")
flags.DEFINE_string("backbone_options", "", "Backbone options: comma-separated key=value.")
flags.DEFINE_bool("tiny", False, "Build the tiny gffnet variant (a quick check of the script).")


def read_image(path):
    import tensorflow as tf

    if not os.path.isfile(path):
        raise ValueError(f"--image: no such file {path!r}.")
    try:
        image = tf.io.decode_image(tf.io.read_file(path), channels=3, expand_animations=False)
    except tf.errors.InvalidArgumentError as error:
        raise ValueError(f"--image: {path!r} is not a readable image ({error.message}).") from error
    return image


def gate_pngs(gates, height, width):
    """Encodes each gate map (batch 1) as an 8-bit grayscale PNG at the image size."""
    import tensorflow as tf

    pngs = []
    for gate in gates:
        gate = tf.reduce_mean(tf.convert_to_tensor(gate, tf.float32), axis=-1, keepdims=True)
        gate = tf.image.resize(gate, (height, width), method="bilinear")[0]
        pngs.append(
            tf.io.encode_png(tf.cast(tf.round(tf.clip_by_value(gate, 0, 1) * 255), tf.uint8))
        )
    return pngs


def load_model():
    import keras

    from keras_fusionseg import models
    from keras_fusionseg.utils.cli_options import parse_key_values

    if FLAGS.model:
        if not os.path.isfile(FLAGS.model):
            raise ValueError(f"--model: no such file {FLAGS.model!r}.")
        return keras.models.load_model(FLAGS.model, compile=False)
    kwargs = dict(models.get_model_spec("gffnet").tiny) if FLAGS.tiny else {}
    if FLAGS.backbone:
        kwargs["backbone"] = FLAGS.backbone
    if FLAGS.backbone_options:
        kwargs["backbone_options"] = parse_key_values(FLAGS.backbone_options, "--backbone_options")
    kwargs.update(parse_key_values(FLAGS.options, "--options"))
    return models.build("gffnet", num_classes=FLAGS.num_classes, weights=FLAGS.weights, **kwargs)


def main(argv):
    del argv
    import tensorflow as tf

    from keras_fusionseg.models.gff import gate_maps_model

    if not FLAGS.image:
        raise app.UsageError("--image is required.")
    image = read_image(FLAGS.image)
    model = gate_maps_model(load_model(), FLAGS.layer)
    gates = model(tf.cast(image[None], tf.float32), training=False)
    height, width = int(image.shape[0]), int(image.shape[1])
    os.makedirs(FLAGS.output_dir, exist_ok=True)
    stem = os.path.splitext(os.path.basename(FLAGS.image))[0]
    tf.io.write_file(os.path.join(FLAGS.output_dir, f"{stem}_image.png"), tf.io.encode_png(image))
    for level, png in enumerate(gate_pngs(gates, height, width), start=1):
        path = os.path.join(FLAGS.output_dir, f"{stem}_G{level}.png")
        tf.io.write_file(path, png)
        print(path)


if __name__ == "__main__":
    app.run(main)
