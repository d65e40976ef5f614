"""DeepLabv3 and DeepLabv3+ models.

Chen et al., "Rethinking Atrous Convolution for Semantic Image Segmentation" (arXiv 2017,
DeepLabv3: ASPP on the backbone output, 1x1 logits, bilinear upsampling) and Chen et al.,
"Encoder-Decoder with Atrous Separable Convolution for Semantic Image Segmentation"
(ECCV 2018, DeepLabv3+: the same encoder plus a decoder on the stride-4 features, Fig. 2).

Defaults follow the paper's best Xception setting: modified aligned Xception-65 at output
stride 16 (train and eval OS16 is the speed/accuracy trade-off of Sec. 4.2 and Table 5),
atrous separable convolution in ASPP and decoder (Sec. 3.2), ASPP rates (6, 12, 18).
"""

import keras

from keras_fusionseg.backbones.checks import l2_regularizer
from keras_fusionseg.layers.deeplabv3plus import ASPP, DeepLabV3PlusDecoder
from keras_fusionseg.models.heads import backbone_output_stride, model_tail, pyramid_level
from keras_fusionseg.models.registry import register_model

# ASPP rates per output stride: (6, 12, 18) at OS16 (paper), doubled at OS8 (paper). At
# OS32 we halve them, which keeps each branch's field of view in input pixels (rate x stride).
ASPP_RATES = {8: (12, 24, 36), 16: (6, 12, 18), 32: (3, 6, 9)}

TINY_DEEPLABV3 = {
    "backbone": "mobilenetv2",
    "backbone_options": {"alpha": 0.35},
    "aspp_filters": 16,
}
TINY_DEEPLABV3PLUS = {**TINY_DEEPLABV3, "decoder_filters": 16, "low_level_filters": 8}


def _atrous_rates(backbone, aspp_rates):
    if aspp_rates is not None:
        return tuple(aspp_rates)  # ASPP validates the values.
    output_stride = backbone_output_stride(backbone)
    if output_stride not in ASPP_RATES:
        raise ValueError(
            f"Cannot choose ASPP rates for a backbone with output stride {output_stride!r} "
            f"(known: {sorted(ASPP_RATES)}); pass `aspp_rates` explicitly."
        )
    return ASPP_RATES[output_stride]


def _separable(backbone, separable):
    if separable is None:
        # The paper's best model uses atrous separable convs with Xception (Table 5).
        return backbone.name.startswith("xception")
    if not isinstance(separable, bool):
        raise ValueError(f"`separable` must be None or a bool, received {separable!r}.")
    return separable


def _encoder(backbone, model_name, aspp_filters, aspp_rates, separable, dropout, weight_decay):
    """ASPP on the backbone's "P5" features (stride = output stride)."""
    features = pyramid_level(backbone, "P5", model_name)
    aspp = ASPP(
        filters=aspp_filters,
        atrous_rates=_atrous_rates(backbone, aspp_rates),
        separable=separable,
        dropout=dropout,
        kernel_regularizer=l2_regularizer(weight_decay),
        name="aspp",
    )
    return aspp(features)


@register_model(
    "deeplabv3", default_backbone="xception65", default_output_stride=16, tiny=TINY_DEEPLABV3
)
def deeplabv3(
    backbone,
    *,
    num_classes,
    aux_outputs=False,
    aspp_filters=256,
    aspp_rates=None,
    separable=None,
    dropout=0.1,
    weight_decay=0.0,
):
    """DeepLabv3: ASPP on the backbone output, 1x1 logits, bilinear upsampling to the input.

    Args:
        backbone: functional `keras.Model` with `pyramid_outputs` (uses "P5").
        num_classes: int, logit channels.
        aux_outputs: bool, return `{"logits": ...}` (the paper has no auxiliary head).
        aspp_filters: int, ASPP width (256).
        aspp_rates: None (by output stride: 12/24/36 at OS8, 6/12/18 at OS16, 3/6/9 at
            OS32) or a tuple of ints.
        separable: None (True on Xception backbones, else False) or bool: atrous separable
            convs in ASPP.
        dropout: float, dropout after the ASPP projection (0.1).
        weight_decay: float, L2 factor on the head's conv kernels (0: none).
    """
    separable = _separable(backbone, separable)
    x = _encoder(backbone, "deeplabv3", aspp_filters, aspp_rates, separable, dropout, weight_decay)
    logits = keras.layers.Conv2D(
        num_classes, 1, kernel_regularizer=l2_regularizer(weight_decay), name="logits_conv"
    )(x)
    return model_tail(
        backbone, logits, name="deeplabv3", num_classes=num_classes, aux_outputs=aux_outputs
    )


@register_model(
    "deeplabv3plus",
    default_backbone="xception65",
    default_output_stride=16,
    tiny=TINY_DEEPLABV3PLUS,
)
def deeplabv3plus(
    backbone,
    *,
    num_classes,
    aux_outputs=False,
    aspp_filters=256,
    decoder_filters=256,
    low_level_filters=48,
    aspp_rates=None,
    separable=None,
    dropout=0.1,
    weight_decay=0.0,
):
    """DeepLabv3+: ASPP encoder, decoder on the stride-4 "P2" features, upsampling to the input.

    Args:
        backbone: functional `keras.Model` with `pyramid_outputs` (uses "P2" and "P5").
        num_classes: int, logit channels.
        aux_outputs: bool, return `{"logits": ...}` (the paper has no auxiliary head).
        aspp_filters: int, ASPP width (256).
        decoder_filters: int, width of the decoder's two 3x3 convs (256).
        low_level_filters: int, width of the low-level 1x1 projection (48).
        aspp_rates: None (by output stride: 12/24/36 at OS8, 6/12/18 at OS16, 3/6/9 at
            OS32) or a tuple of ints.
        separable: None (True on Xception backbones, else False) or bool: atrous separable
            convs in ASPP and decoder.
        dropout: float, dropout after the ASPP projection (0.1).
        weight_decay: float, L2 factor on the head's conv kernels (0: none).
    """
    separable = _separable(backbone, separable)
    low_level = pyramid_level(backbone, "P2", "deeplabv3plus")
    x = _encoder(
        backbone, "deeplabv3plus", aspp_filters, aspp_rates, separable, dropout, weight_decay
    )
    decoder = DeepLabV3PlusDecoder(
        num_classes,
        filters=decoder_filters,
        low_level_filters=low_level_filters,
        separable=separable,
        kernel_regularizer=l2_regularizer(weight_decay),
        name="decoder",
    )
    logits = decoder([x, low_level])
    return model_tail(
        backbone, logits, name="deeplabv3plus", num_classes=num_classes, aux_outputs=aux_outputs
    )
