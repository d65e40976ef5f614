"""Inference-only rewrites of a trained model: batch norm folded into the conv before it.

In inference a batch norm is a per-channel affine map, `y = s * (z - mean) + beta` with
`s = gamma / sqrt(var + eps)`; when `z` is a convolution's output and nothing else reads `z`,
`y` is the same convolution with its kernel scaled by `s` along the output channels and a bias
`s * (b - mean) + beta`. The folded model computes the same logits (up to float rounding) with
one elementwise pass fewer per conv, which matters most where convs are cheap (depthwise,
1x1, MobileNetV2).

Two places hold conv -> BN pairs in our models:

- the functional graph (ResNet and MobileNetV2 backbones): rebuilt with `keras.models.clone_model`,
  the conv cloned with a bias and the BN node dropped;
- the composite layers `ConvBNReLU` and `SeparableConvBN`, wherever they sit (in the graph or
  inside heads such as `ASPP` or `JointPyramidUpsampling`): their sublayers are swapped in the
  copy. A `ConvBNReLU` then says `use_bias=True, use_bn=False` in its config and a
  `SeparableConvBN` `use_bn=False`, which build exactly the folded layer (so folding a folded
  model again, as `export_saved_model` does by default, changes nothing).

The result is for inference graphs (SavedModel, TFLite, timing): save the original model as
`.keras`, because heads whose sublayers were swapped rebuild with fresh batch norms on load.
Batch norms that follow no conv (e.g. `ContextEncoding`'s norm over codewords) stay.

`to_bfloat16` is the other inference rewrite: the same model rebuilt under Keras'
"mixed_bfloat16" policy (float32 weights, bfloat16 activations and matmuls, float32 logits),
for CPUs that execute bfloat16 natively (`utils.precision.native_bfloat16`);
`resolve_inference_precision` turns the scripts' `--precision` flag into "float32" or
"bfloat16".
"""

import keras
import numpy as np

from keras_fusionseg.layers.common import ConvBNReLU, SeparableConvBN
from keras_fusionseg.models.segmentation_model import SegmentationModel
from keras_fusionseg.utils.precision import dtype_policy, native_bfloat16

# Conv classes whose output channels a per-channel scale can be folded into (subclasses, e.g.
# our AtrousConv2D / AtrousDepthwiseConv2D, included).
_CONVS = (
    keras.layers.Conv2D,
    keras.layers.DepthwiseConv2D,
    keras.layers.SeparableConv2D,
)


def _bn_affine(bn):
    """(scale, shift) in float64 with bn(z) == scale * z + shift in inference."""
    mean = np.asarray(bn.moving_mean, np.float64)
    var = np.asarray(bn.moving_variance, np.float64)
    gamma = np.asarray(bn.gamma, np.float64) if bn.scale else np.ones_like(mean)
    beta = np.asarray(bn.beta, np.float64) if bn.center else np.zeros_like(mean)
    scale = gamma / np.sqrt(var + bn.epsilon)
    return scale, beta - mean * scale


def _foldable(conv, bn):
    """Whether `bn` acts on the last axis of `conv`'s channels-last output."""
    if not isinstance(conv, _CONVS) or not isinstance(bn, keras.layers.BatchNormalization):
        return False
    if getattr(conv, "data_format", "channels_last") != "channels_last":
        return False
    if conv.activation not in (None, keras.activations.linear):
        return False
    return bn.axis in (-1, 3) and bn.built and conv.built  # 2D convs: NHWC outputs


def _folded_weights(conv, bn):
    """Folded (kernel(s)..., bias) for a conv followed by `bn`, in the conv's weight order."""
    scale, shift = _bn_affine(bn)
    bias = np.asarray(conv.bias, np.float64) if conv.use_bias else 0.0
    new_bias = scale * bias + shift
    if isinstance(conv, keras.layers.SeparableConv2D):
        depthwise = np.asarray(conv.depthwise_kernel)
        pointwise = np.asarray(conv.pointwise_kernel, np.float64) * scale
        kernels = [depthwise, pointwise]
    elif isinstance(conv, keras.layers.DepthwiseConv2D):
        kernel = np.asarray(conv.kernel, np.float64)  # [kh, kw, C, M], output c * M + m
        kernels = [kernel * scale.reshape(kernel.shape[2:])]
    else:
        kernels = [np.asarray(conv.kernel, np.float64) * scale]
    dtype = np.dtype(conv.variable_dtype)
    return [k.astype(dtype) for k in kernels] + [np.asarray(new_bias, dtype)]


def _biased_copy(conv, bn):
    """A built copy of `conv` with a bias, computing bn(conv(x))."""
    config = {**conv.get_config(), "use_bias": True}
    for key in ("bias_regularizer", "bias_constraint"):
        config.pop(key, None)
    new = type(conv).from_config(config)
    kernel = conv.depthwise_kernel if hasattr(conv, "depthwise_kernel") else conv.kernel
    channels = kernel.shape[2] * getattr(conv, "groups", 1)
    new.build((None, None, None, channels))
    new.set_weights(_folded_weights(conv, bn))
    return new


def _swap(parent, attribute, old, new):
    """Replaces sublayer `old` of a built layer by `new` (or removes it when `new` is None).

    Keras locks a built layer's state; the layer-tracking store is edited directly so that the
    parent's `weights` and `layers` list the new sublayer only.
    """
    if new is None:
        parent._tracker.untrack(old)
    else:
        parent._tracker.replace_tracked_value("layers", old, new)
    object.__setattr__(parent, attribute, new)


def _fold_composite(layer):
    """Folds the BNs inside `layer` (a built copy owned by the folded model), recursively."""
    if isinstance(layer, ConvBNReLU) and layer.bn is not None and _foldable(layer.conv, layer.bn):
        _swap(layer, "conv", layer.conv, _biased_copy(layer.conv, layer.bn))
        _swap(layer, "bn", layer.bn, None)
        layer.use_bias, layer.use_bn = True, False
    elif isinstance(layer, SeparableConvBN) and layer.use_bn:
        pairs = (("depthwise", "depthwise_bn"), ("pointwise", "pointwise_bn"))
        if all(_foldable(getattr(layer, c), getattr(layer, b)) for c, b in pairs):
            for conv_name, bn_name in pairs:
                conv, bn = getattr(layer, conv_name), getattr(layer, bn_name)
                _swap(layer, conv_name, conv, _biased_copy(conv, bn))
                _swap(layer, bn_name, bn, None)
            layer.use_bn = False
    for sublayer in list(layer._layers):
        _fold_composite(sublayer)


def _fold_like(new, old):
    """Folds, in `new` (a fresh copy of `old` made from its config), the composite layers that
    `old` has folded already, so that both hold the same weights. Composite heads (e.g. JPU,
    ASPP) re-create their `ConvBNReLU` / `SeparableConvBN` sublayers with batch norms from
    their own configs; the folded values are copied over afterwards."""
    if isinstance(old, (ConvBNReLU, SeparableConvBN)):
        if new.use_bn and not old.use_bn:
            _fold_composite(new)
        return
    for new_sublayer, old_sublayer in zip(new._layers, old._layers, strict=True):
        _fold_like(new_sublayer, old_sublayer)


def _copy_weights(new, old):
    """`old`'s weights into its clone `new`, where `old` may have been folded already."""
    _fold_like(new, old)
    new.set_weights(old.get_weights())


def _graph_nodes(model):
    """Every node of a functional model and of the functional models nested in it."""
    nodes = []
    for depth_nodes in model._nodes_by_depth.values():
        for node in depth_nodes:
            nodes.append(node)
            if isinstance(node.operation, keras.Model) and hasattr(
                node.operation, "_nodes_by_depth"
            ):
                nodes.extend(_graph_nodes(node.operation))
    return nodes


def _graph_outputs(model):
    outputs = list(keras.tree.flatten(model.outputs))
    for layer in model.layers:
        if isinstance(layer, keras.Model) and hasattr(layer, "_nodes_by_depth"):
            outputs.extend(_graph_outputs(layer))
    return outputs


def _graph_pairs(model):
    """[(conv, bn)] for graph nodes conv -> BN where the BN is the conv output's only reader."""
    nodes = _graph_nodes(model)
    readers = {}
    calls = {}
    for node in nodes:
        calls[id(node.operation)] = calls.get(id(node.operation), 0) + 1
        for tensor in node.input_tensors:
            readers[id(tensor)] = readers.get(id(tensor), 0) + 1
    for tensor in _graph_outputs(model):
        readers[id(tensor)] = readers.get(id(tensor), 0) + 1
    pairs = []
    for node in nodes:
        bn = node.operation
        if not isinstance(bn, keras.layers.BatchNormalization) or len(node.input_tensors) != 1:
            continue
        tensor = node.input_tensors[0]
        conv = tensor._keras_history.operation
        if (
            readers[id(tensor)] == 1
            and calls[id(bn)] == 1
            and calls.get(id(conv)) == 1
            and _foldable(conv, bn)
        ):
            pairs.append((conv, bn))
    return pairs


def _with_record(model, copy):
    """`copy` as a `SegmentationModel` with `model`'s record (how it was built, losses,
    dataset) when `model` is one, else `copy` itself."""
    if not isinstance(model, SegmentationModel):
        return copy
    return SegmentationModel(
        copy.input,
        copy.output,
        name=model.name,
        build_arguments=model.build_arguments,
        loss_spec=model.loss_spec,
        dataset=model.dataset,
    )


def _model_policy(model):
    """The dtype policy of `model`'s convs when they share one, else the global policy."""
    names = {
        layer.dtype_policy.name for layer in model._flatten_layers() if isinstance(layer, _CONVS)
    }
    return names.pop() if len(names) == 1 else keras.config.dtype_policy().name


def fold_batch_norm(model):
    """A copy of `model` with every batch norm that follows a conv folded into that conv.

    Inference-exact (same logits up to float rounding; `training=True` behaviour is not kept:
    the folded model has no batch statistics to update). Same inputs and outputs as `model`.
    Folded: `Conv2D`, `DepthwiseConv2D`, `SeparableConv2D` and their subclasses (`AtrousConv2D`,
    `AtrousDepthwiseConv2D`) followed in the functional graph by a `BatchNormalization` that
    is their output's only reader, and the convs inside `ConvBNReLU` / `SeparableConvBN` layers
    anywhere in the model. The input model is not changed.

    Args:
        model: a built functional `keras.Model` (e.g. from `models.build` or a `.keras` file).

    Returns:
        A new functional `keras.Model`, for inference and export (see the module docstring on
        saving); a `SegmentationModel` keeps its record (build arguments, loss_spec, dataset).

    Example:
    >>> from keras_fusionseg import models
    >>> model = models.build("deeplabv3plus", num_classes=3, backbone="mobilenetv2",
    ...                      backbone_options={"alpha": 0.35}, input_shape=(64, 64, 3))
    >>> count_batch_norms(fold_batch_norm(model))
    0
    """
    if not hasattr(model, "_nodes_by_depth"):
        raise ValueError(
            f"`model` must be a functional keras.Model, received {type(model).__name__}."
        )
    pairs = _graph_pairs(model)
    bn_of_conv = {id(conv): bn for conv, bn in pairs}
    folded_bns = {id(bn) for _, bn in pairs}
    copies = []  # (new layer, old layer, the BN folded into it or None)
    skipped = set()  # ids of the clones of folded BNs: their nodes pass the input through

    def clone(layer):
        if id(layer) in bn_of_conv:
            new = type(layer).from_config({**layer.get_config(), "use_bias": True})
            copies.append((new, layer, bn_of_conv[id(layer)]))
            return new
        new = type(layer).from_config(layer.get_config())
        if id(layer) in folded_bns:
            skipped.add(id(new))
        else:
            copies.append((new, layer, None))
        return new

    def call(layer, *args, **kwargs):
        if id(layer) in skipped:
            return args[0]
        return layer(*args, **kwargs)

    # Composite layers build their sublayers in __init__ under the global dtype policy, so a
    # mixed-precision model (`to_bfloat16`) is cloned under its own policy.
    with dtype_policy(_model_policy(model)):
        folded = keras.models.clone_model(
            model, clone_function=clone, call_function=call, recursive=True
        )
        for new, old, bn in copies:
            if bn is not None:
                new.set_weights(_folded_weights(old, bn))
            else:
                _copy_weights(new, old)
                _fold_composite(new)
    return _with_record(model, folded)


def count_batch_norms(model):
    """Number of `BatchNormalization` layers `model` still runs (nested layers included)."""
    return sum(
        isinstance(layer, keras.layers.BatchNormalization)
        for layer in model._flatten_layers(include_self=False, recursive=True)
    )


INFERENCE_PRECISIONS = ("float32", "bfloat16", "auto")


def to_bfloat16(model):
    """`model` cloned under the "mixed_bfloat16" dtype policy, with the same weights.

    Layers then compute in bfloat16 (half the memory traffic of float32, and on CPUs with
    AVX512-BF16 / AMX-BF16 or Arm BF16 the dot products run in hardware) while their variables
    stay float32; the layers that produce the model's outputs keep their own policy (our heads
    cast the logits to float32: `models.heads.model_tail`), so the outputs keep their dtype.
    Batch norms normalise in float32 inside (Keras upcasts bfloat16 inputs). The input model
    is not changed.

    Why not `clone_model` alone: every layer's config records its dtype policy (float32), and
    our composite layers create their sublayers in `__init__` under the global policy; so each
    layer is re-created from its config with the policy replaced, under a global
    "mixed_bfloat16" policy, which is what building the model under that policy gives. Any
    functional model works this way: `models.build` ones, `.keras` files, presets (whose
    configs carry no build arguments) and models on backbone objects.

    Args:
        model: a functional `keras.Model` (a `SegmentationModel` keeps its record).

    Returns:
        A new functional model with the same inputs, outputs and weights.

    Raises:
        ValueError: `model` is not a functional model.
    """
    if not hasattr(model, "_nodes_by_depth"):
        raise ValueError(
            f"to_bfloat16 clones a functional keras.Model; model {model.name!r} is a "
            f"{type(model).__name__} (subclassed models: build them under "
            'keras.config.set_dtype_policy("mixed_bfloat16") yourself).'
        )
    # The top model's outputs only: a nested backbone's feature maps compute in bfloat16 too.
    outputs = keras.tree.flatten(model.outputs)
    output_layers = {id(tensor._keras_history.operation) for tensor in outputs}
    copies = []  # (new layer, old layer)

    def clone(layer):
        config = layer.get_config()
        if id(layer) not in output_layers:
            config["dtype"] = "mixed_bfloat16"
        new = type(layer).from_config(config)
        copies.append((new, layer))
        return new

    with dtype_policy("mixed_bfloat16"):
        converted = keras.models.clone_model(model, clone_function=clone, recursive=True)
    for new, old in copies:
        _copy_weights(new, old)  # `model` may be folded (`fold_batch_norm`) already
    return _with_record(model, converted)


def resolve_inference_precision(name):
    """The `--precision` flag of the inference scripts resolved to "float32" or "bfloat16".

    Args:
        name: "float32", "bfloat16" or "auto" (bfloat16 when `native_bfloat16()`, else
            float32).

    Returns:
        (precision, reason): the resolved name and a one-line reason for it.
    """
    if name not in INFERENCE_PRECISIONS:
        raise ValueError(
            f"precision must be one of {list(INFERENCE_PRECISIONS)}, received {name!r}."
        )
    if name != "auto":
        return name, f"--precision={name}"
    native, reason = native_bfloat16()
    return ("bfloat16" if native else "float32"), f"--precision=auto: {reason}"


def with_precision(model, precision):
    """`model` as is for "float32", `to_bfloat16(model)` for "bfloat16" (resolved names)."""
    if precision == "float32":
        return model
    if precision == "bfloat16":
        return to_bfloat16(model)
    raise ValueError(
        f"precision must be 'float32' or 'bfloat16' (resolve 'auto' first), received {precision!r}."
    )
