"""ONNX export with tf2onnx (the optional `onnx` extra: tf2onnx, onnx, onnxruntime).

The ONNX graph is the model itself, like the TFLite one: raw RGB pixels in [0, 255]
`images: float32 [batch, height, width, channels]` with batch, height and width dynamic, to
`logits: float32 [batch, height, width, num_classes]` at the input resolution, and with
`class_ids=True` also `class_ids: int32 [batch, height, width]` (the argmax). Resizing or
padding to a size the model likes is the caller's choice, as with `TFLiteSegmenter`.

Two details make the graph run in onnxruntime:

- the dilated layers are traced as native dilated convs (`native_dilated_convs()`, one
  ONNX `Conv` per layer, as for TFLite) instead of the shift-and-add ops of the TF graph;
- tf2onnx writes a "same"-padded conv of unknown height and width as `auto_pad=SAME_UPPER`,
  which onnxruntime refuses for dilated kernels ("Dilation not supported for
  AutoPadType::SAME_UPPER"). Our dilated convs all have stride 1 (strided ones are refused
  by the layers), where "same" padding does not depend on the input size: it is
  `(k - 1) * rate` split as TensorFlow splits it, so it is written as explicit `pads`.

Measured with tf2onnx 1.17.0, onnx 1.23.2, onnxruntime 1.32.0, TensorFlow 2.21, Keras 3.15
(no package downgraded): every registered model's tiny variant converts and matches Keras
within 1e-4 at sizes other than any used before (tests/test_onnx.py).
"""

import os

import tensorflow as tf

from keras_fusionseg.export.saved_model import main_logits
from keras_fusionseg.layers.atrous import native_dilated_convs

DEFAULT_OPSET = 17
_MISSING = "ONNX export needs tf2onnx and onnx: pip install 'keras_fusionseg[onnx]'"


def export_onnx(model, path, *, class_ids=False, opset=DEFAULT_OPSET):
    """Converts a Keras segmentation model to an ONNX file with dynamic batch, height, width.

    Args:
        model: a `keras.Model` from raw pixels to logits (or a dict with "logits").
        path: str, the `.onnx` file to write (its folder is created).
        class_ids: bool, add a `class_ids` int32 output (the per-pixel argmax).
        opset: int >= 13, ONNX opset of the graph (tested: 17).

    Returns:
        The `onnx.ModelProto` written.

    Example:

    ```python
    from keras_fusionseg import models
    from keras_fusionseg.export import export_onnx

    model = models.build("deeplabv3plus", num_classes=3, backbone="mobilenetv2",
                         backbone_options={"alpha": 0.35})
    export_onnx(model, "model.onnx")
    # onnxruntime.InferenceSession("model.onnx").run(None, {"images": pixels})[0]: logits
    ```
    """
    try:
        import onnx
        import tf2onnx
    except ImportError as error:
        raise ImportError(f"{_MISSING} ({error}).") from error
    if not isinstance(opset, int) or opset < 13:
        raise ValueError(f"`opset` must be an int >= 13, received {opset!r}.")
    channels = model.input_shape[-1]
    spec = tf.TensorSpec([None, None, None, channels], tf.float32, name="images")

    @tf.function(input_signature=[spec])
    def infer(images):
        logits = tf.cast(main_logits(model(images, training=False)), tf.float32)
        outputs = {"logits": logits}  # tf2onnx names the ONNX outputs after the keys
        if class_ids:
            outputs["class_ids"] = tf.argmax(logits, axis=-1, output_type=tf.int32)
        return outputs

    with native_dilated_convs():
        proto, _ = tf2onnx.convert.from_function(infer, input_signature=[spec], opset=opset)
    explicit_dilated_padding(proto)
    _tidy_signature(proto)
    onnx.checker.check_model(proto)
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    onnx.save(proto, os.fspath(path))
    return proto


def explicit_dilated_padding(proto):
    """Replaces `auto_pad=SAME_*` of dilated stride-1 `Conv` nodes with explicit `pads`.

    Returns:
        int, the number of nodes changed.

    Raises:
        ValueError: for a dilated, strided conv with "same" padding, whose padding depends on
            the input size (none of our layers makes one).
    """
    from onnx import helper

    changed = 0
    for node in proto.graph.node:
        if node.op_type != "Conv":
            continue
        attributes = {a.name: helper.get_attribute_value(a) for a in node.attribute}
        auto_pad = attributes.get("auto_pad", b"NOTSET")
        auto_pad = auto_pad.decode() if isinstance(auto_pad, bytes) else auto_pad
        dilations = list(attributes.get("dilations", []))
        if auto_pad not in ("SAME_UPPER", "SAME_LOWER") or all(d == 1 for d in dilations):
            continue
        strides = list(attributes.get("strides", [1] * len(dilations)))
        if any(s != 1 for s in strides):
            raise ValueError(
                f"Conv node {node.name!r} has dilations {dilations}, strides {strides} and "
                f"{auto_pad} padding: its padding depends on the input size."
            )
        totals = [(k - 1) * d for k, d in zip(attributes["kernel_shape"], dilations, strict=True)]
        # SAME_UPPER puts the odd pixel at the end, like TensorFlow's "SAME".
        begins = [t // 2 if auto_pad == "SAME_UPPER" else t - t // 2 for t in totals]
        ends = [t - b for t, b in zip(totals, begins, strict=True)]
        for attribute in [a for a in node.attribute if a.name in ("auto_pad", "pads")]:
            node.attribute.remove(attribute)
        node.attribute.append(helper.make_attribute("pads", begins + ends))
        changed += 1
    return changed


def _tidy_signature(proto):
    """`logits` as the first output, and the dynamic dimensions named batch/height/width."""
    outputs = sorted(proto.graph.output, key=lambda o: o.name != "logits")
    names = ["batch", "height", "width"]
    for value in [*proto.graph.input, *outputs]:
        for dim, name in zip(value.type.tensor_type.shape.dim, names, strict=False):
            if not dim.HasField("dim_value"):
                dim.dim_param = name
    copies = [type(o)() for o in outputs]
    for copy, output in zip(copies, outputs, strict=True):
        copy.CopyFrom(output)
    del proto.graph.output[:]
    proto.graph.output.extend(copies)
