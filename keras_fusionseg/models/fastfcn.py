"""EncNet and the FastFCN models: JPU on a plain backbone with EncNet, ASPP or PSP heads.

Wu et al., "FastFCN: Rethinking Dilated Convolution in the Backbone for Semantic
Segmentation" (arXiv 2019, Fig. 2): the backbone keeps output stride 32 and
`JointPyramidUpsampling` rebuilds stride-8 features from Conv3-Conv5 for the head.
The dilated counterparts (Table 1/2 "None" rows: output stride 8, no JPU, the same head)
are `encnet` (Zhang et al., "Context Encoding for Semantic Segmentation", CVPR 2018),
`pspnet` (in `models.gff`) and `dilated_aspp`.
"""

from keras_fusionseg.layers.common import HEAD_BN_EPSILON, HEAD_BN_MOMENTUM, check_positive_int
from keras_fusionseg.layers.deeplabv3plus import ASPP
from keras_fusionseg.layers.fastfcn import ContextEncoding, JointPyramidUpsampling
from keras_fusionseg.models.heads import (
    TINY_RESNET,
    check_dropout,
    classify_with_fcn_aux,
    conv_bn_relu,
    psp_head,
    pyramid_level,
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


def _register(name, default_output_stride, tiny):
    """`register_model` with the family's default backbone: the reference's ResNet-50."""
    return register_model(
        name,
        default_backbone="resnet50",
        default_output_stride=default_output_stride,
        tiny=tiny,
        default_backbone_options=FASTFCN_BACKBONE,
    )


def jpu_features(backbone, jpu_width, model_name):
    """Stride-8 features rebuilt by JPU from "P3".."P5" of an output-stride-32 backbone."""
    check_positive_int("jpu_width", jpu_width)
    stages = [pyramid_level(backbone, key, model_name) for key in JPU_LEVELS]
    return JointPyramidUpsampling(
        width=jpu_width, bn_momentum=HEAD_BN_MOMENTUM, bn_epsilon=HEAD_BN_EPSILON, name="jpu"
    )(stages)


def _check_common(head_width, aux_width, dropout):
    check_positive_int("head_width", head_width)
    check_positive_int("aux_width", aux_width)
    check_dropout(dropout)


def encoding_head_model(
    backbone,
    features,
    name,
    /,
    *,
    num_classes,
    aux_outputs=False,
    reduce_kernel_size=3,
    head_width=512,
    num_codes=32,
    aux_width=256,
    dropout=0.1,
    loss_weights=None,
):
    """EncNet head on stride-8 `features`: conv-BN-ReLU to `head_width`, context encoding,
    dropout, 1x1; with `aux_outputs` also `"aux"` (FCN head on "P4") and `"se"` (class-presence
    logits of the SE loss).

    Args:
        backbone: the backbone `features` come from (`pyramid_outputs` "P4" for aux).
        features: stride-8 feature map ("P5" of a dilated backbone, or JPU's output).
        name: str, the model's name.
        num_classes: int, logit channels.
        aux_outputs: bool, also return `"aux"` and `"se"`.
        reduce_kernel_size: 1 or 3, kernel of the conv to `head_width` before the encoding
            (the reference: 3 on the dilated backbone, 1 after JPU).
        head_width: int, head channels (512).
        num_codes: int, K codewords of the context encoding (32).
        aux_width: int, channels of the auxiliary head's 3x3 conv (256).
        dropout: float, dropout before the 1x1 classifiers (0.1).
        loss_weights: dict, auxiliary loss weights (None: FastFCN's aux 0.2, SE 0.2).
    """
    _check_common(head_width, aux_width, dropout)
    if reduce_kernel_size not in (1, 3) or isinstance(reduce_kernel_size, bool):
        raise ValueError(
            f"`reduce_kernel_size` must be None, 1 or 3, received {reduce_kernel_size!r}."
        )
    x = conv_bn_relu(head_width, reduce_kernel_size, "encoding_reduce")(features)
    x, presence = ContextEncoding(
        num_codes=num_codes,
        num_classes=num_classes,
        bn_momentum=HEAD_BN_MOMENTUM,
        bn_epsilon=HEAD_BN_EPSILON,
        name="context_encoding",
    )(x)
    return classify_with_fcn_aux(
        backbone,
        x,
        name=name,
        num_classes=num_classes,
        aux_outputs=aux_outputs,
        aux_width=aux_width,
        dropout=dropout,
        loss_weights=loss_weights or FASTFCN_LOSS_WEIGHTS,
        extra_aux={"se": presence},
        loss_kinds={"se": PRESENCE},
    )


def aspp_head_model(
    backbone,
    features,
    name,
    /,
    *,
    num_classes,
    aux_outputs=False,
    head_width=256,
    aspp_rates=ASPP_RATES_OS8,
    projection_dropout=0.5,
    aux_width=256,
    dropout=0.1,
    loss_weights=None,
):
    """DeepLabv3 head of the FastFCN reference on stride-8 `features`: ASPP (its projection
    followed by dropout 0.5), 3x3 conv-BN-ReLU, dropout, 1x1; `"aux"` with `aux_outputs`.

    Args:
        backbone: the backbone `features` come from (`pyramid_outputs` "P4" for aux).
        features: stride-8 feature map ("P5" of a dilated backbone, or JPU's output).
        name: str, the model's name.
        num_classes: int, logit channels.
        aux_outputs: bool, also return `"aux"` (FCN head on "P4").
        head_width: int, ASPP and head channels (256).
        aspp_rates: tuple of int, ASPP atrous rates (12, 24, 36).
        projection_dropout: float, dropout after the ASPP projection (0.5, the FastFCN
            reference's head; DeepLab's own ASPP uses 0.1).
        aux_width: int, channels of the auxiliary head's 3x3 conv (256).
        dropout: float, dropout before the 1x1 classifiers (0.1).
        loss_weights: dict, auxiliary loss weights (None: FastFCN's aux 0.2).
    """
    _check_common(head_width, aux_width, dropout)
    aspp = ASPP(head_width, atrous_rates=aspp_rates, dropout=projection_dropout, name="aspp")
    x = conv_bn_relu(head_width, 3, "aspp_conv")(aspp(features))
    return classify_with_fcn_aux(
        backbone,
        x,
        name=name,
        num_classes=num_classes,
        aux_outputs=aux_outputs,
        aux_width=aux_width,
        dropout=dropout,
        loss_weights=loss_weights or FASTFCN_LOSS_WEIGHTS,
    )


def psp_head_model(
    backbone,
    features,
    name,
    /,
    *,
    num_classes,
    aux_outputs=False,
    head_width=512,
    bins=(1, 2, 3, 6),
    aux_width=256,
    dropout=0.1,
    loss_weights=None,
):
    """PSP head on stride-8 `features`: pyramid pooling, 3x3 conv-BN-ReLU, dropout, 1x1;
    `"aux"` with `aux_outputs`.

    Args:
        backbone: the backbone `features` come from (`pyramid_outputs` "P4" for aux).
        features: stride-8 feature map (JPU's output).
        name: str, the model's name.
        num_classes: int, logit channels.
        aux_outputs: bool, also return `"aux"` (FCN head on "P4").
        head_width: int, channels of the 3x3 conv after pyramid pooling (512).
        bins: tuple of int, pyramid pooling grid sizes (1, 2, 3, 6).
        aux_width: int, channels of the auxiliary head's 3x3 conv (256).
        dropout: float, dropout before the 1x1 classifiers (0.1).
        loss_weights: dict, auxiliary loss weights (None: FastFCN's aux 0.2).
    """
    _check_common(head_width, aux_width, dropout)
    x = psp_head(features, bins, head_width, "psp")
    return classify_with_fcn_aux(
        backbone,
        x,
        name=name,
        num_classes=num_classes,
        aux_outputs=aux_outputs,
        aux_width=aux_width,
        dropout=dropout,
        loss_weights=loss_weights or FASTFCN_LOSS_WEIGHTS,
    )


@_register("encnet", 8, {**TINY_HEAD, "num_codes": 4})
def encnet(backbone, *, num_classes, aux_outputs=False, reduce_kernel_size=None, **options):
    """EncNet: dilated backbone (output stride 8) + EncNet head (context encoding, SE-loss output `"se"`).

    Zhang et al., "Context Encoding for Semantic Segmentation" (CVPR 2018); the dilated
    counterpart of `fastfcn_encnet` (FastFCN Table 1/2, "None" rows).

    Args:
        backbone: functional `keras.Model` with `pyramid_outputs` ("P5"; "P4" for aux).
        num_classes: int, logit channels.
        aux_outputs: bool, also return `"aux"` (FCN head on "P4") and `"se"`
            (class-presence logits of the SE loss).
        reduce_kernel_size: None (3, the original EncNet's), 1 or 3: kernel of the conv to
            `head_width` before the encoding.
        **options: the head options of `encoding_head_model` (head_width, num_codes,
            aux_width, dropout, loss_weights).
    """
    return encoding_head_model(
        backbone,
        pyramid_level(backbone, "P5", "encnet"),
        "encnet",
        num_classes=num_classes,
        aux_outputs=aux_outputs,
        reduce_kernel_size=3 if reduce_kernel_size is None else reduce_kernel_size,
        **options,
    )


@_register("fastfcn_encnet", 32, {**TINY_JPU, "num_codes": 4})
def fastfcn_encnet(
    backbone, *, num_classes, aux_outputs=False, jpu_width=512, reduce_kernel_size=None, **options
):
    """FastFCN: JPU on an output-stride-32 backbone + EncNet head (context encoding, SE-loss output `"se"`).

    Args:
        backbone: functional `keras.Model` with `pyramid_outputs` ("P3".."P5"; "P4" for aux).
        num_classes: int, logit channels.
        aux_outputs: bool, also return `"aux"` (FCN head on "P4") and `"se"`
            (class-presence logits of the SE loss).
        jpu_width: int, JPU width (512; its output is 4x this).
        reduce_kernel_size: None (1, the FastFCN reference's after JPU), 1 or 3: kernel of the
            conv to `head_width` before the encoding.
        **options: the head options of `encoding_head_model` (head_width, num_codes,
            aux_width, dropout, loss_weights).
    """
    return encoding_head_model(
        backbone,
        jpu_features(backbone, jpu_width, "fastfcn_encnet"),
        "fastfcn_encnet",
        num_classes=num_classes,
        aux_outputs=aux_outputs,
        reduce_kernel_size=1 if reduce_kernel_size is None else reduce_kernel_size,
        **options,
    )


@_register("dilated_aspp", 8, {**TINY_HEAD, "aspp_rates": (1, 2, 3)})
def dilated_aspp(backbone, *, num_classes, aux_outputs=False, **options):
    """Dilated backbone (output stride 8) + DeepLabv3 ASPP head (rates 12/24/36 at stride 8).

    The dilated counterpart of `fastfcn_aspp` (FastFCN Table 1/2, "None" rows).

    Args:
        backbone: functional `keras.Model` with `pyramid_outputs` ("P5"; "P4" for aux).
        num_classes: int, logit channels.
        aux_outputs: bool, also return `"aux"` (FCN head on "P4").
        **options: the head options of `aspp_head_model` (head_width, aspp_rates,
            projection_dropout, aux_width, dropout, loss_weights).
    """
    return aspp_head_model(
        backbone,
        pyramid_level(backbone, "P5", "dilated_aspp"),
        "dilated_aspp",
        num_classes=num_classes,
        aux_outputs=aux_outputs,
        **options,
    )


@_register("fastfcn_aspp", 32, {**TINY_JPU, "aspp_rates": (1, 2, 3)})
def fastfcn_aspp(backbone, *, num_classes, aux_outputs=False, jpu_width=512, **options):
    """FastFCN: JPU on an output-stride-32 backbone + DeepLabv3 ASPP head (rates 12/24/36 at stride 8).

    Args:
        backbone: functional `keras.Model` with `pyramid_outputs` ("P3".."P5"; "P4" for aux).
        num_classes: int, logit channels.
        aux_outputs: bool, also return `"aux"` (FCN head on "P4").
        jpu_width: int, JPU width (512; its output is 4x this).
        **options: the head options of `aspp_head_model` (head_width, aspp_rates,
            projection_dropout, aux_width, dropout, loss_weights).
    """
    return aspp_head_model(
        backbone,
        jpu_features(backbone, jpu_width, "fastfcn_aspp"),
        "fastfcn_aspp",
        num_classes=num_classes,
        aux_outputs=aux_outputs,
        **options,
    )


@_register("fastfcn_psp", 32, TINY_JPU)
def fastfcn_psp(backbone, *, num_classes, aux_outputs=False, jpu_width=512, **options):
    """FastFCN: JPU on an output-stride-32 backbone + PSP head.

    The dilated PSP counterpart is `pspnet` (`models.gff`), the same head at output stride 8.

    Args:
        backbone: functional `keras.Model` with `pyramid_outputs` ("P3".."P5"; "P4" for aux).
        num_classes: int, logit channels.
        aux_outputs: bool, also return `"aux"` (FCN head on "P4").
        jpu_width: int, JPU width (512; its output is 4x this).
        **options: the head options of `psp_head_model` (head_width, bins, aux_width,
            dropout, loss_weights).
    """
    return psp_head_model(
        backbone,
        jpu_features(backbone, jpu_width, "fastfcn_psp"),
        "fastfcn_psp",
        num_classes=num_classes,
        aux_outputs=aux_outputs,
        **options,
    )


# `training.config` checks `model.options` names against these signatures, past `**options`.
encnet.forwards_options_to = encoding_head_model
fastfcn_encnet.forwards_options_to = encoding_head_model
dilated_aspp.forwards_options_to = aspp_head_model
fastfcn_aspp.forwards_options_to = aspp_head_model
fastfcn_psp.forwards_options_to = psp_head_model
