"""EncNet and the FastFCN models: JPU on a plain backbone with EncNet, ASPP or PSP heads.

Wu et al., "FastFCN: Rethinking Dilated Convolution in the Backbone for Semantic
Segmentation" (arXiv 2019, Fig. 2): the backbone keeps output stride 32 and
`JointPyramidUpsampling` rebuilds stride-8 features from Conv3-Conv5 for the head.
The dilated counterparts (Table 1/2 "None" rows: output stride 8, no JPU, the same head)
are `encnet` (Zhang et al., "Context Encoding for Semantic Segmentation", CVPR 2018),
`pspnet` (in `models.gff`) and `dilated_aspp`.
"""

from keras_fusionseg.layers.deeplabv3plus import ASPP
from keras_fusionseg.layers.fastfcn import ContextEncoding, JointPyramidUpsampling
from keras_fusionseg.layers.gff import HEAD_BN_EPSILON, HEAD_BN_MOMENTUM
from keras_fusionseg.models.gff import (
    TINY_RESNET,
    check_dropout,
    check_positive_int,
    classifier,
    conv_bn_relu,
    fcn_aux_head,
    psp_head,
    pyramid_level,
    segmentation_model,
)
from keras_fusionseg.models.registry import PRESENCE, register_model

JPU_LEVELS = ("P3", "P4", "P5")
# ASPP rates of DeepLabv3 at output stride 8: JPU and the dilated backbone both give stride 8.
ASPP_RATES_OS8 = (12, 24, 36)
FASTFCN_LOSS_WEIGHTS = {"aux": 0.2, "se": 0.2}

TINY_HEAD = {**TINY_RESNET, "head_width": 16, "aux_width": 16}
TINY_JPU = {**TINY_HEAD, "jpu_width": 8}

# The FastFCN reference ResNets: three-conv deep stem, convs without bias (REFERENCE_FACTS).
FASTFCN_BACKBONE = {"deep_stem": True, "use_bias": False}


def _features(backbone, use_jpu, jpu_width, model_name):
    """Stride-8 features: JPU on "P3".."P5" (FastFCN), or "P5" of a dilated backbone."""
    if not use_jpu:
        return pyramid_level(backbone, "P5", model_name)
    check_positive_int("jpu_width", jpu_width)
    stages = [pyramid_level(backbone, key, model_name) for key in JPU_LEVELS]
    return JointPyramidUpsampling(
        width=jpu_width, bn_momentum=HEAD_BN_MOMENTUM, bn_epsilon=HEAD_BN_EPSILON, name="jpu"
    )(stages)


def _check_common(head_width, aux_width, dropout):
    check_positive_int("head_width", head_width)
    check_positive_int("aux_width", aux_width)
    check_dropout(dropout)


def _aux(backbone, aux_outputs, num_classes, aux_width, dropout, model_name):
    if not aux_outputs:
        return {}
    p4 = pyramid_level(backbone, "P4", model_name)
    return {"aux": fcn_aux_head(p4, num_classes, aux_width, dropout, "aux")}


def _encoding_model(
    backbone,
    use_jpu,
    name,
    *,
    num_classes,
    aux_outputs,
    jpu_width,
    head_width,
    num_codes,
    reduce_kernel_size,
    aux_width,
    dropout,
    loss_weights,
):
    """EncNet head: conv-BN-ReLU to `head_width`, context encoding, dropout, 1x1.

    The reference reduces with a 3x3 conv on the dilated backbone (the original EncNet) and
    with a 1x1 conv after JPU; `reduce_kernel_size=None` picks that.
    """
    _check_common(head_width, aux_width, dropout)
    if reduce_kernel_size is None:
        reduce_kernel_size = 1 if use_jpu else 3
    elif reduce_kernel_size not in (1, 3) or isinstance(reduce_kernel_size, bool):
        raise ValueError(
            f"`reduce_kernel_size` must be None, 1 or 3, received {reduce_kernel_size!r}."
        )
    x = _features(backbone, use_jpu, jpu_width, name)
    x = conv_bn_relu(head_width, reduce_kernel_size, "encoding_reduce")(x)
    x, presence = ContextEncoding(
        num_codes=num_codes,
        num_classes=num_classes,
        bn_momentum=HEAD_BN_MOMENTUM,
        bn_epsilon=HEAD_BN_EPSILON,
        name="context_encoding",
    )(x)
    logits = classifier(x, num_classes, dropout, "logits_conv")
    aux = _aux(backbone, aux_outputs, num_classes, aux_width, dropout, name)
    if aux_outputs:
        aux["se"] = presence
    return segmentation_model(
        backbone, logits, aux, aux_outputs, loss_weights, {"se": PRESENCE}, name
    )


def _aspp_model(
    backbone,
    use_jpu,
    name,
    *,
    num_classes,
    aux_outputs,
    jpu_width,
    head_width,
    aspp_rates,
    projection_dropout,
    aux_width,
    dropout,
    loss_weights,
):
    """DeepLabv3 head (FastFCN reference): ASPP (its projection followed by dropout 0.5),
    3x3 conv-BN-ReLU, dropout, 1x1."""
    _check_common(head_width, aux_width, dropout)
    x = _features(backbone, use_jpu, jpu_width, name)
    aspp = ASPP(head_width, atrous_rates=aspp_rates, dropout=projection_dropout, name="aspp")
    x = aspp(x)
    x = conv_bn_relu(head_width, 3, "aspp_conv")(x)
    logits = classifier(x, num_classes, dropout, "logits_conv")
    aux = _aux(backbone, aux_outputs, num_classes, aux_width, dropout, name)
    return segmentation_model(backbone, logits, aux, aux_outputs, loss_weights, None, name)


def _psp_model(
    backbone,
    use_jpu,
    name,
    *,
    num_classes,
    aux_outputs,
    jpu_width,
    head_width,
    bins,
    aux_width,
    dropout,
    loss_weights,
):
    """PSP head: pyramid pooling, 3x3 conv-BN-ReLU, dropout, 1x1."""
    _check_common(head_width, aux_width, dropout)
    x = _features(backbone, use_jpu, jpu_width, name)
    x = psp_head(x, bins, head_width, "psp")
    logits = classifier(x, num_classes, dropout, "logits_conv")
    aux = _aux(backbone, aux_outputs, num_classes, aux_width, dropout, name)
    return segmentation_model(backbone, logits, aux, aux_outputs, loss_weights, None, name)


_ARGS = """
    Args:
        backbone: functional `keras.Model` with `pyramid_outputs` ("P3".."P5"; "P4" for aux).
        num_classes: int, logit channels.
        aux_outputs: bool, also return `"aux"` (FCN head on "P4"){se}.
        jpu_width: int, JPU width (512; output 4x this), JPU models only.
        head_width: int, head channels (512 for EncNet / PSP, 256 for ASPP).
        aux_width: int, channels of the auxiliary head's 3x3 conv (256).
        dropout: float, dropout before the 1x1 classifiers (0.1).
        loss_weights: dict, auxiliary loss weights (FastFCN: aux 0.2, SE 0.2).
"""


def _register_encoding(name, use_jpu, default_output_stride):
    tiny = {**(TINY_JPU if use_jpu else TINY_HEAD), "num_codes": 4}

    def builder(
        backbone,
        *,
        num_classes,
        aux_outputs=False,
        jpu_width=512,
        head_width=512,
        num_codes=32,
        reduce_kernel_size=None,
        aux_width=256,
        dropout=0.1,
        loss_weights=None,
    ):
        return _encoding_model(
            backbone,
            use_jpu,
            name,
            num_classes=num_classes,
            aux_outputs=aux_outputs,
            jpu_width=jpu_width,
            head_width=head_width,
            num_codes=num_codes,
            reduce_kernel_size=reduce_kernel_size,
            aux_width=aux_width,
            dropout=dropout,
            loss_weights=loss_weights or FASTFCN_LOSS_WEIGHTS,
        )

    kind = (
        "FastFCN: JPU on an output-stride-32 backbone"
        if use_jpu
        else "EncNet: dilated backbone (output stride 8)"
    )
    builder.__doc__ = (
        f'{kind} + EncNet head (context encoding, SE-loss output `"se"`).\n'
        + _ARGS.format(se=', and `"se"`: class-presence logits (SE loss)')
        + "        num_codes: int, K codewords of the context encoding (32).\n"
        + "        reduce_kernel_size: None, 1 or 3, kernel of the conv to `head_width` before\n"
        + "            the encoding; None = the reference's (3 without JPU, 1 after JPU).\n"
    )
    return register_model(
        name,
        default_backbone="resnet50",
        default_output_stride=default_output_stride,
        tiny=tiny,
        default_backbone_options=FASTFCN_BACKBONE,
    )(builder)


def _register_aspp(name, use_jpu, default_output_stride):
    def builder(
        backbone,
        *,
        num_classes,
        aux_outputs=False,
        jpu_width=512,
        head_width=256,
        aspp_rates=ASPP_RATES_OS8,
        projection_dropout=0.5,
        aux_width=256,
        dropout=0.1,
        loss_weights=None,
    ):
        return _aspp_model(
            backbone,
            use_jpu,
            name,
            num_classes=num_classes,
            aux_outputs=aux_outputs,
            jpu_width=jpu_width,
            head_width=head_width,
            aspp_rates=aspp_rates,
            projection_dropout=projection_dropout,
            aux_width=aux_width,
            dropout=dropout,
            loss_weights=loss_weights or FASTFCN_LOSS_WEIGHTS,
        )

    kind = (
        "FastFCN: JPU on an output-stride-32 backbone"
        if use_jpu
        else "Dilated backbone (output stride 8)"
    )
    builder.__doc__ = (
        f"{kind} + DeepLabv3 ASPP head (rates 12/24/36 at stride 8).\n"
        + _ARGS.format(se="")
        + "        aspp_rates: tuple of int, ASPP atrous rates (12, 24, 36).\n"
        + "        projection_dropout: float, dropout after the ASPP projection (0.5, the\n"
        + "            FastFCN reference's head; DeepLab's own ASPP uses 0.1).\n"
    )
    tiny = {**(TINY_JPU if use_jpu else TINY_HEAD), "aspp_rates": (1, 2, 3)}
    return register_model(
        name,
        default_backbone="resnet50",
        default_output_stride=default_output_stride,
        tiny=tiny,
        default_backbone_options=FASTFCN_BACKBONE,
    )(builder)


def _register_psp(name, use_jpu, default_output_stride):
    def builder(
        backbone,
        *,
        num_classes,
        aux_outputs=False,
        jpu_width=512,
        head_width=512,
        bins=(1, 2, 3, 6),
        aux_width=256,
        dropout=0.1,
        loss_weights=None,
    ):
        return _psp_model(
            backbone,
            use_jpu,
            name,
            num_classes=num_classes,
            aux_outputs=aux_outputs,
            jpu_width=jpu_width,
            head_width=head_width,
            bins=bins,
            aux_width=aux_width,
            dropout=dropout,
            loss_weights=loss_weights or FASTFCN_LOSS_WEIGHTS,
        )

    builder.__doc__ = (
        "FastFCN: JPU on an output-stride-32 backbone + PSP head.\n"
        + _ARGS.format(se="")
        + "        bins: tuple of int, pyramid pooling grid sizes (1, 2, 3, 6).\n"
    )
    tiny = TINY_JPU if use_jpu else TINY_HEAD
    return register_model(
        name,
        default_backbone="resnet50",
        default_output_stride=default_output_stride,
        tiny=tiny,
        default_backbone_options=FASTFCN_BACKBONE,
    )(builder)


encnet = _register_encoding("encnet", use_jpu=False, default_output_stride=8)
fastfcn_encnet = _register_encoding("fastfcn_encnet", use_jpu=True, default_output_stride=32)
dilated_aspp = _register_aspp("dilated_aspp", use_jpu=False, default_output_stride=8)
fastfcn_aspp = _register_aspp("fastfcn_aspp", use_jpu=True, default_output_stride=32)
fastfcn_psp = _register_psp("fastfcn_psp", use_jpu=True, default_output_stride=32)
# The dilated PSP counterpart is `pspnet` (models.gff), the same head at output stride 8.
