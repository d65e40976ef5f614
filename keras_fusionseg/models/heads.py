"""Pieces every model builder shares: option checks, pyramid access, the PSP / FCN heads and
the model tail.

The tail (`model_tail`) is the end of every builder: resize the logits to the input, cast
and name the outputs (`finalize_outputs`), and make the `SegmentationModel` that records its
`loss_spec` and build arguments.
"""

import keras

from keras_fusionseg.layers.common import (
    HEAD_BN_EPSILON,
    HEAD_BN_MOMENTUM,
    ConvBNReLU,
    ResizeToReference,
)
from keras_fusionseg.layers.gff import PyramidPooling
from keras_fusionseg.models.segmentation_model import SEGMENTATION, SegmentationModel

# A narrow one-block-per-stage ResNet for the tiny variants (`register_model(tiny=...)`).
TINY_RESNET = {
    "backbone": "resnet50",
    "backbone_options": {"depths": (1, 1, 1, 1), "stage_widths": (8, 16, 32, 64), "stem_width": 16},
}


def check_dropout(value):
    if not isinstance(value, int | float) or isinstance(value, bool) or not 0 <= value < 1:
        raise ValueError(f"`dropout` must be a float in [0, 1), received {value!r}.")


def check_bool(name, value):
    if not isinstance(value, bool):
        raise ValueError(f"`{name}` must be a bool, received {value!r}.")


def pyramid_level(backbone, key, model_name):
    """The backbone's feature map `key`, with an error naming the model if it is missing."""
    if key not in backbone.pyramid_outputs:
        raise ValueError(
            f"`{model_name}` needs the backbone's {key!r} features; its `pyramid_outputs` has "
            f"{sorted(backbone.pyramid_outputs)}."
        )
    return backbone.pyramid_outputs[key]


def backbone_output_stride(backbone):
    """The backbone's output stride: its attribute, else the static shapes of "P5" (None
    when neither tells)."""
    output_stride = getattr(backbone, "output_stride", None)
    if output_stride is not None:
        return output_stride
    height = backbone.inputs[0].shape[1]
    features = backbone.pyramid_outputs.get("P5")
    feature_height = None if features is None else features.shape[1]
    if height and feature_height:
        return round(height / feature_height)
    return None


def conv_bn_relu(filters, kernel_size, name):
    """Head conv-BN-ReLU with the PyTorch-style BN settings of the GFF/FastFCN references."""
    return ConvBNReLU(
        filters, kernel_size, bn_momentum=HEAD_BN_MOMENTUM, bn_epsilon=HEAD_BN_EPSILON, name=name
    )


def classifier(x, num_classes, dropout, name):
    """Channel dropout then a 1x1 conv with bias to class logits (PSPNet / EncNet heads).

    The PSPNet, EncNet, FastFCN and GFF references drop whole feature maps before their
    classifiers (2-D "spatial" dropout), not single activations.
    """
    if dropout:
        x = keras.layers.SpatialDropout2D(dropout, name=f"{name}_dropout")(x)
    return keras.layers.Conv2D(num_classes, 1, name=name)(x)


def psp_head(features, bins, width, name):
    """PSPNet head body: pyramid pooling, then a 3x3 conv-BN-ReLU to `width` channels."""
    x = PyramidPooling(
        bins=bins, bn_momentum=HEAD_BN_MOMENTUM, bn_epsilon=HEAD_BN_EPSILON, name=f"{name}_pooling"
    )(features)
    return conv_bn_relu(width, 3, f"{name}_bottleneck")(x)


def fcn_aux_head(features, num_classes, width, dropout, name):
    """Auxiliary FCN head (PSPNet / EncNet): 3x3 conv-BN-ReLU, dropout, 1x1 logits.

    Its logits stay at the feature resolution; training resizes the labels to them.
    """
    x = conv_bn_relu(width, 3, f"{name}_conv")(features)
    return classifier(x, num_classes, dropout, f"{name}_logits")


def classify_with_fcn_aux(
    backbone,
    features,
    *,
    name,
    num_classes,
    aux_outputs,
    aux_width,
    dropout,
    loss_weights,
    extra_aux=None,
    loss_kinds=None,
):
    """The end of the PSPNet / GFF / EncNet / FastFCN heads: dropout and a 1x1 classifier on
    `features`, with `aux_outputs` the auxiliary FCN head on "P4" (res4) as `"aux"` (plus
    `extra_aux`), then `model_tail`.

    Args:
        backbone: the model's backbone (`pyramid_outputs` "P4" for aux).
        features: the head's last feature map.
        name: str, the model's name.
        num_classes: int, logit channels.
        aux_outputs: bool.
        aux_width: int, channels of the auxiliary head's 3x3 conv.
        dropout: float, dropout before each 1x1 classifier.
        loss_weights: dict output name -> weight of the auxiliary losses.
        extra_aux: dict name -> tensor of more auxiliary outputs (e.g. EncNet's "se").
        loss_kinds: dict name -> loss kind of those that are not `SEGMENTATION`.
    """
    logits = classifier(features, num_classes, dropout, "logits_conv")
    aux = {}
    if aux_outputs:
        p4 = pyramid_level(backbone, "P4", name)
        aux = {"aux": fcn_aux_head(p4, num_classes, aux_width, dropout, "aux"), **(extra_aux or {})}
    return model_tail(
        backbone,
        logits,
        name=name,
        num_classes=num_classes,
        aux=aux,
        aux_outputs=aux_outputs,
        loss_weights=loss_weights,
        loss_kinds=loss_kinds,
    )


def finalize_outputs(logits, aux=None, aux_outputs=False, loss_weights=None, loss_kinds=None):
    """Casts outputs to float32 (safe under mixed precision) and names them.

    Args:
        logits: main per-pixel logits at input resolution.
        aux: dict name -> tensor of auxiliary outputs (ignored unless `aux_outputs`).
        aux_outputs: bool, return a dict with the auxiliary outputs.
        loss_weights: dict name -> float weight of each auxiliary loss (default 0.4).
        loss_kinds: dict name -> `SEGMENTATION` or `PRESENCE` (default `SEGMENTATION`).

    Returns:
        (outputs, loss_spec): outputs for `keras.Model`, and a dict
        name -> (kind, weight) including `"logits": (SEGMENTATION, 1.0)`.
    """
    main = keras.layers.Activation("linear", dtype="float32", name="logits")(logits)
    loss_spec = {"logits": (SEGMENTATION, 1.0)}
    if not aux_outputs:
        return main, loss_spec
    outputs = {"logits": main}
    loss_weights = loss_weights or {}
    loss_kinds = loss_kinds or {}
    for key, tensor in (aux or {}).items():
        outputs[key] = keras.layers.Activation("linear", dtype="float32", name=key)(tensor)
        loss_spec[key] = (loss_kinds.get(key, SEGMENTATION), float(loss_weights.get(key, 0.4)))
    return outputs, loss_spec


def model_tail(
    backbone,
    logits,
    *,
    name,
    num_classes,
    aux=None,
    aux_outputs=False,
    loss_weights=None,
    loss_kinds=None,
    resize=True,
):
    """The end of every builder: logits to the input size, named float32 outputs, the model.

    Args:
        backbone: the backbone the head was built on (its inputs become the model's).
        logits: main logits; bilinearly resized to the input unless `resize=False` (for
            heads that already end at input size, e.g. DUpsampling or GCN's last step).
        name: str, the model's name (the registered name).
        num_classes: int, recorded in the model's build arguments.
        aux, aux_outputs, loss_weights, loss_kinds: see `finalize_outputs`.
        resize: bool.

    Returns:
        A `SegmentationModel` with its `loss_spec` and the build arguments known here (model
        name, num_classes, aux_outputs, output stride); `models.build` adds the rest.
    """
    image = backbone.inputs[0]
    if resize:
        logits = ResizeToReference(name="upsample_logits")([logits, image])
    outputs, loss_spec = finalize_outputs(logits, aux, aux_outputs, loss_weights, loss_kinds)
    # A single input tensor (not a one-element list) keeps Keras from warning on every call.
    inputs = image if len(backbone.inputs) == 1 else backbone.inputs
    return SegmentationModel(
        inputs,
        outputs,
        name=name,
        loss_spec=loss_spec,
        build_arguments={
            "model": name,
            "num_classes": num_classes,
            "aux_outputs": bool(aux_outputs),
            "output_stride": backbone_output_stride(backbone),
        },
    )
