"""Parameter and multiply-add counts of Keras models.

`count_macs` freezes the model's inference graph at a fixed input size and asks the TensorFlow
profiler for the float operations of its convolutions (regular and depthwise) and matrix
products; MACs = FLOPs / 2. Element-wise ops (batch norm, ReLU, additions, resizing) are not
counted, as in the usual conv + depthwise multiply-add counts of DeepLab models.
"""

import numpy as np
import tensorflow as tf
from tensorflow.python.framework.convert_to_constants import (
    convert_variables_to_constants_v2,
)

from keras_fusionseg.layers.atrous import native_dilated_convs

# Op types whose profiler FLOPs are counted (2 FLOPs per multiply-add).
COUNTED_OP_TYPES = (
    "Conv2D",
    "DepthwiseConv2dNative",
    "MatMul",
    "BatchMatMul",
    "BatchMatMulV2",
    "BatchMatMulV3",
)


def count_parameters(model):
    """Number of scalar weights of `model`.

    Args:
        model: a built `keras.Model` (or layer).

    Returns:
        dict with `trainable`, `non_trainable` (e.g. batch-norm moving statistics) and
        `total`, all ints.
    """
    # Own sum: `model.count_params()` gives only the total, not the trainable split.
    if not model.built:
        raise ValueError(f"Model {model.name!r} is not built; call it or build it first.")
    trainable = int(sum(np.prod(w.shape) for w in model.trainable_weights))
    non_trainable = int(sum(np.prod(w.shape) for w in model.non_trainable_weights))
    return {
        "trainable": trainable,
        "non_trainable": non_trainable,
        "total": trainable + non_trainable,
    }


def _input_hw(input_size):
    if isinstance(input_size, int) and not isinstance(input_size, bool):
        input_size = (input_size, input_size)
    if (
        not isinstance(input_size, list | tuple)
        or len(input_size) != 2
        or not all(isinstance(s, int) and not isinstance(s, bool) and s >= 1 for s in input_size)
    ):
        raise ValueError(
            "`input_size` must be a positive int or (height, width) of positive ints, "
            f"received {input_size!r}."
        )
    return tuple(input_size)


def macs_by_op_type(model, input_size, batch_size=1, count_dilation_padding=False):
    """Multiply-adds per op type of one inference pass at `input_size` (see `count_macs`)."""
    height, width = _input_hw(input_size)
    if len(model.inputs) != 1:
        raise ValueError(f"Model {model.name!r} must have one input, it has {len(model.inputs)}.")
    model_input = model.inputs[0]
    if len(model_input.shape) != 4:
        raise ValueError(
            f"Model {model.name!r} must take NHWC images, its input shape is {model_input.shape}."
        )
    for name, fixed, wanted in zip(
        ("height", "width"), model_input.shape[1:3], (height, width), strict=True
    ):
        if fixed is not None and fixed != wanted:
            raise ValueError(
                f"Model {model.name!r} has a fixed input {name} of {fixed}, received input_size "
                f"{(height, width)}."
            )
    spec = tf.TensorSpec((batch_size, height, width, model_input.shape[-1]), model_input.dtype)
    function = tf.function(lambda x: model(x, training=False), autograph=False)
    # One native op per dilated conv (the portable form spreads depthwise taps over
    # element-wise ops the profiler does not count).
    with native_dilated_convs():
        function = function.get_concrete_function(spec)
    frozen = convert_variables_to_constants_v2(function)
    graph = tf.Graph()
    with graph.as_default():
        tf.graph_util.import_graph_def(frozen.graph.as_graph_def(), name="")
    op_types = {op.name: op.type for op in graph.get_operations()}
    builder = tf.compat.v1.profiler.ProfileOptionBuilder
    options = builder(builder.float_operation()).with_empty_output().build()
    # The "scope" view lists every node with its own FLOPs (the "op" view mixes totals).
    logger = tf.get_logger()
    level = logger.level
    logger.setLevel("ERROR")  # the profiler warns that it is a TF1 API on every call
    try:
        profile = tf.compat.v1.profiler.profile(graph, options=options, cmd="scope")
    finally:
        logger.setLevel(level)
    macs = {}
    stack = list(profile.children)
    while stack:
        node = stack.pop()
        stack.extend(node.children)
        op_type = op_types.get(node.name)
        if op_type in COUNTED_OP_TYPES and node.float_ops:
            ops = node.float_ops
            if not count_dilation_padding:
                ops *= _space_to_batch_fraction(graph.get_operation_by_name(node.name))
            macs[op_type] = macs.get(op_type, 0) + int(round(ops / 2))
    return macs


def _space_to_batch_fraction(op):
    """Share of a dilated conv's outputs that survive `BatchToSpaceND`'s crop (1 if none).

    TensorFlow runs a dilated conv on a space-to-batch tensor padded to a multiple of the
    rate; the profiler counts the padded outputs, the papers count the real ones.
    """
    consumers = op.outputs[0].consumers()
    if len(consumers) != 1 or consumers[0].type != "BatchToSpaceND":
        return 1.0
    padded = op.outputs[0].shape.num_elements()
    cropped = consumers[0].outputs[0].shape.num_elements()
    if not padded or not cropped:
        return 1.0
    return cropped / padded


def count_macs(model, input_size, batch_size=1, count_dilation_padding=False):
    """Multiply-adds of one inference pass of `model` on `input_size` images.

    Counts convolutions (regular, depthwise and dilated) and matrix products only.

    Args:
        model: a `keras.Model` with one NHWC image input.
        input_size: int or (height, width).
        batch_size: int, images per pass (MACs scale linearly).
        count_dilation_padding: bool, also count the outputs that TensorFlow computes on the
            padding of the space-to-batch form of stock Keras dilated convs (e.g. in keras-hub
            models); by default only the real outputs are counted, as in the papers. The
            library's own dilated layers are traced as one native op each (no padding).

    Returns:
        int, multiply-adds (FLOPs / 2).
    """
    macs = macs_by_op_type(model, input_size, batch_size, count_dilation_padding)
    return int(sum(macs.values()))
