"""PSPNet and GFFNet models.

Zhao et al., "Pyramid Scene Parsing Network" (CVPR 2017): dilated ResNet (output stride 8),
pyramid pooling on the last stage, 3x3 conv, 1x1 logits, and an auxiliary FCN head on
res4 (weight 0.4). Li et al., "Gated Fully Fusion for Semantic Segmentation" (AAAI 2020,
Fig. 3): the same network with every backbone stage reduced to 256 channels, fused by GFF
(eq. 5), refined by two 3x3 convs per level, and combined with the PSP context by the dense
feature pyramid (eq. 6) before the logits.
"""

import keras

from keras_fusionseg.layers.common import (
    HEAD_BN_EPSILON,
    HEAD_BN_MOMENTUM,
    ResizeToReference,
    check_positive_int,
)
from keras_fusionseg.layers.gff import DenseFeaturePyramid, GatedFullyFusion
from keras_fusionseg.models.heads import (
    TINY_RESNET,
    check_bool,
    check_dropout,
    classify_with_fcn_aux,
    conv_bn_relu,
    psp_head,
    pyramid_level,
)
from keras_fusionseg.models.registry import register_model

GFF_LEVELS = ("P2", "P3", "P4", "P5")


@register_model(
    "pspnet",
    default_backbone="resnet101",
    default_output_stride=8,
    tiny={**TINY_RESNET, "head_width": 16, "aux_width": 16},
)
def pspnet(
    backbone,
    *,
    num_classes,
    aux_outputs=False,
    bins=(1, 2, 3, 6),
    head_width=512,
    aux_width=256,
    dropout=0.1,
    aux_weight=0.4,
):
    """PSPNet: pyramid pooling on the last stage of a dilated ResNet (Zhao et al., CVPR 2017).

    Args:
        backbone: functional `keras.Model` with `pyramid_outputs` (uses "P5"; "P4" for aux).
        num_classes: int, logit channels.
        aux_outputs: bool, also return `"aux"`: FCN-head logits on "P4" (res4).
        bins: tuple of int, pyramid pooling grid sizes (1, 2, 3, 6).
        head_width: int, channels of the 3x3 conv after pyramid pooling (512).
        aux_width: int, channels of the auxiliary head's 3x3 conv (256).
        dropout: float, dropout before each 1x1 classifier (0.1).
        aux_weight: float, loss weight of the auxiliary head (0.4).
    """
    check_positive_int("head_width", head_width)
    check_positive_int("aux_width", aux_width)
    check_dropout(dropout)
    x = psp_head(pyramid_level(backbone, "P5", "pspnet"), bins, head_width, "psp")
    return classify_with_fcn_aux(
        backbone,
        x,
        name="pspnet",
        num_classes=num_classes,
        aux_outputs=aux_outputs,
        aux_width=aux_width,
        dropout=dropout,
        loss_weights={"aux": aux_weight},
    )


@register_model(
    "gffnet",
    default_backbone="resnet101",
    default_output_stride=8,
    tiny={**TINY_RESNET, "head_width": 16, "gff_width": 8, "dfp_width": 8, "aux_width": 16},
)
def gffnet(
    backbone,
    *,
    num_classes,
    aux_outputs=False,
    bins=(1, 2, 3, 6),
    head_width=512,
    gff_width=256,
    dfp_width=256,
    dfp_kernel_size=1,
    use_dfp=True,
    per_channel_gates=False,
    sequential_fusion=False,
    gate_use_bias=False,
    aux_width=256,
    dropout=0.1,
    aux_weight=0.4,
):
    """GFFNet: PSPNet + gated fully fusion of all stages + dense feature pyramid (GFF, AAAI 2020).

    Layout (paper Fig. 3 and Sec. "Network Architecture"): stages "P2".."P5" are each
    reduced to `gff_width` by a 1x1 conv-BN-ReLU, fused by `GatedFullyFusion` (layer name
    "gff", whose second output holds the gate maps), and refined by two 3x3 conv-BN-ReLU per
    level. The PSP context y_0 (pyramid pooling + 3x3 conv to `head_width`) and the refined
    levels, deepest first, feed `DenseFeaturePyramid`; its concatenated outputs (at the
    stride of "P2") go through dropout and a 1x1 classifier. With `use_dfp=False` (the
    paper's "PSPNet + GFF") y_0 and the refined levels are concatenated directly.

    Args:
        backbone: functional `keras.Model` with `pyramid_outputs` "P2".."P5".
        num_classes: int, logit channels.
        aux_outputs: bool, also return `"aux"`: FCN-head logits on "P4" (res4).
        bins: tuple of int, pyramid pooling grid sizes.
        head_width: int, PSP bottleneck channels (512).
        gff_width: int, channels every level is reduced to before fusion (256).
        dfp_width: int, channels of each dense pyramid output y_i (256).
        dfp_kernel_size: int, kernel of each dense fusion H_i (the paper: "a single
            convolution layer"; 1 by default, 3 is the other reading).
        use_dfp: bool, add the dense feature pyramid.
        per_channel_gates: bool, one gate per channel (released code) instead of per level.
        sequential_fusion: bool, fuse levels in turn (released code) instead of eq. 5 at once.
        gate_use_bias: bool, bias in the gate convs (released code); eq. 5 has none.
        aux_width: int, channels of the auxiliary head's 3x3 conv (256).
        dropout: float, dropout before each 1x1 classifier (0.1).
        aux_weight: float, loss weight of the auxiliary head (0.4).
    """
    for name, value in (
        ("head_width", head_width),
        ("gff_width", gff_width),
        ("dfp_width", dfp_width),
        ("aux_width", aux_width),
    ):
        check_positive_int(name, value)
    check_bool("use_dfp", use_dfp)
    check_dropout(dropout)
    stages = [pyramid_level(backbone, key, "gffnet") for key in GFF_LEVELS]
    context = psp_head(stages[-1], bins, head_width, "psp")
    reduced = [
        conv_bn_relu(gff_width, 1, f"gff_reduce_{key}")(x)
        for key, x in zip(GFF_LEVELS, stages, strict=True)
    ]
    fused, _ = GatedFullyFusion(
        per_channel_gates=per_channel_gates,
        sequential=sequential_fusion,
        use_bias=gate_use_bias,
        name="gff",
    )(reduced)
    refined = []
    for key, x in zip(GFF_LEVELS, fused, strict=True):
        x = conv_bn_relu(gff_width, 3, f"gff_refine_{key}_1")(x)
        refined.append(conv_bn_relu(gff_width, 3, f"gff_refine_{key}_2")(x))
    top_down = [context, *refined[::-1]]
    if use_dfp:
        x = DenseFeaturePyramid(
            filters=dfp_width,
            kernel_size=dfp_kernel_size,
            bn_momentum=HEAD_BN_MOMENTUM,
            bn_epsilon=HEAD_BN_EPSILON,
            name="dfp",
        )(top_down)
    else:
        finest = top_down[-1]
        resized = [
            ResizeToReference(name=f"gff_concat_resize_{i}")([y, finest])
            for i, y in enumerate(top_down[:-1])
        ]
        x = keras.layers.Concatenate(name="gff_concat")([*resized, finest])
    return classify_with_fcn_aux(
        backbone,
        x,
        name="gffnet",
        num_classes=num_classes,
        aux_outputs=aux_outputs,
        aux_width=aux_width,
        dropout=dropout,
        loss_weights={"aux": aux_weight},
    )


def gate_maps_model(model, layer_name="gff"):
    """A `keras.Model` from `model`'s image to the list of GFF gate maps G_1..G_L (Fig. 6/7).

    Args:
        model: a model containing a `GatedFullyFusion` layer (e.g. `build("gffnet", ...)`).
        layer_name: str, name of that layer ("gff" in `gffnet`).
    """
    try:
        layer = model.get_layer(layer_name)
    except ValueError as error:
        raise ValueError(
            f"Model {model.name!r} has no GatedFullyFusion layer named {layer_name!r}."
        ) from error
    if not isinstance(layer, GatedFullyFusion):
        raise ValueError(f"Layer {layer_name!r} of {model.name!r} is not a GatedFullyFusion layer.")
    # Keras flattens the layer's (fused, gates) output: the gate maps are the second half.
    outputs = layer.output
    return keras.Model(model.input, list(outputs[len(outputs) // 2 :]), name=f"{model.name}_gates")
