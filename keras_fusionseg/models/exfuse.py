"""GCN ("Large Kernel Matters") and ExFuse models.

Peng et al., "Large Kernel Matters -- Improve Semantic Segmentation by Global Convolutional
Network", CVPR 2017, Fig. 2: every backbone stage res-2..res-5 ("P2".."P5") goes through a
`GlobalConvolution` to class scores and a `BoundaryRefinement`; top-down, the coarser map is
upsampled x2, added, and refined by another BR; two more (upsample x2, BR) steps reach the
input size. Zhang et al., "ExFuse: Enhancing Feature Fusion for Semantic Segmentation",
ECCV 2018, Fig. 2 adds five switchable components (its Table 3 ablation):

- semantic supervision (SS, Sec. 3.1): a head on every stage (3x3 conv-BN-ReLU twice, then
  a 1x1 classifier) with an auxiliary loss ("ss_P2".."ss_P5"); `ss_features="block"` feeds
  the GCN from the head's 2nd conv instead of the stage (Table 3 #2). The paper supervises
  these heads with ImageNet classification while pre-training the backbone ("a weighted
  summation of all auxiliary branches") and then drops the classifiers; without that
  pre-training stage we supervise them with the segmentation label (per-pixel, at the stage's
  resolution) during segmentation training (adapted). Their weights are normalised: the four
  SS losses share `ss_loss_weight` (0.4 in all, 0.1 each), so the auxiliary terms do not
  outweigh the main loss.
- layer rearrangement (LR, Sec. 3.1): a backbone option, see `LAYER_REARRANGEMENT`.
- semantic embedding branch (SEB, Sec. 3.1, Fig. 4) on levels 1-3 ("P2".."P4").
- explicit channel resolution embedding (ECRE, Sec. 3.2, Fig. 5): the first top-down
  upsampling (of the "P5" scores) is a sub-pixel x2 with its own loss ("ecre").
- densely adjacent prediction (DAP, Sec. 3.2, eq. 3): the decoder is num_classes * k * k
  wide (189 for 21 classes) and DAP averages the adjacent predictions at the end.

Upsampling in the decoder is bilinear by default (`ResizeToReference` / `UpsampleBilinear`,
sizes read at run time) where the GCN paper uses deconvolutions (adapted);
`upsampling="deconv"` builds the paper's learnt 4x4 stride-2 transposed convs
(`DeconvolutionUpsample`, bilinear-initialised), which ECRE's comparison (Table 4) assumes.
Either way any input size works, no padding needed (x2 outputs are fitted to the finer
level's size when a size is odd: cropped, or their last row/column repeated on a backbone that
halves odd sizes down, `fit_to_reference`).
"""

import keras

from keras_fusionseg.layers.common import ConvBNReLU, ResizeToReference
from keras_fusionseg.layers.exfuse import (
    DEFAULT_GCN_KERNEL_SIZE,
    BoundaryRefinement,
    DeconvolutionUpsample,
    DenselyAdjacentPrediction,
    ExplicitChannelResolutionEmbedding,
    GlobalConvolution,
    SemanticEmbeddingBranch,
    UpsampleBilinear,
)
from keras_fusionseg.models.heads import check_bool, model_tail
from keras_fusionseg.models.registry import register_model

LEVELS = ("P2", "P3", "P4", "P5")  # the paper's levels 1-4 (res-2..res-5)

# Layer rearrangement (ExFuse Sec. 3.1): {3, 4, 23, 3} -> {8, 8, 9, 8} bottleneck blocks with
# MACs kept. For ResNet v1 bottlenecks a block at mid width w on an s x s map costs
# 17 * w^2 * s^2 multiply-adds and every stage halves s and doubles w, so all blocks cost
# the same and, with 33 blocks either way, the default widths already keep the MACs exactly
# (7.568 GMACs at 224 x 224 for both, counted with `utils.counting.count_macs`); parameters
# grow from 42.66M to 50.80M. `exfuse` uses it with its default backbone; for another
# model: `build(name, backbone="resnet101", backbone_options=LAYER_REARRANGEMENT)`.
LAYER_REARRANGEMENT = {"depths": (8, 8, 9, 8), "stage_widths": (64, 128, 256, 512)}

# Tiny variants normalise pixels to [-1, 1] (no pretrained weights to match): with "caffe"
# inputs (+-128) untrained activations are large (~1e3 when SEB's factors were Glorot-
# initialised, before `identity_init`), beyond what float32 comparisons at atol 1e-5 tolerate.
_TINY_BACKBONE = {
    "depths": (1, 1, 1, 1),
    "stage_widths": (8, 16, 32, 64),
    "stem_width": 16,
    "normalization": "tf",
}
TINY_GCN = {"backbone": "resnet50", "backbone_options": _TINY_BACKBONE, "gcn_kernel_size": 5}
TINY_EXFUSE = {**TINY_GCN, "ss_channels": 16}

SS_FEATURES = ("stage", "block")
UPSAMPLING = ("bilinear", "deconv")


def _semantic_supervision(x, num_classes, channels, level):
    """SS head (ExFuse Fig. 3, adapted): two 3x3 conv-BN-ReLU, then 1x1 class scores."""
    x = ConvBNReLU(channels, 3, name=f"ss_{level}_conv1")(x)
    block = ConvBNReLU(channels, 3, name=f"ss_{level}_conv2")(x)
    scores = keras.layers.Conv2D(num_classes, 1, name=f"ss_{level}_classifier")(block)
    return block, scores


def gcn_exfuse_model(
    backbone,
    name,
    /,
    *,
    num_classes,
    aux_outputs=False,
    gcn_kernel_size=DEFAULT_GCN_KERNEL_SIZE,
    semantic_supervision=False,
    ss_features="block",
    ss_channels=256,
    semantic_embedding=False,
    channel_resolution_embedding=False,
    densely_adjacent_prediction=False,
    dap_kernel_size=3,
    decoder_width=None,
    upsampling="bilinear",
    ss_loss_weight=0.4,
    ecre_loss_weight=0.4,
):
    """GCN (Fig. 2 of the GCN paper) with the ExFuse components switched on one by one.

    `gcn` builds it with every component off by default, `exfuse` with SS, SEB, ECRE and DAP
    on; both take every option below.

    Args:
        backbone: functional `keras.Model` with `pyramid_outputs` "P2".."P5" (the GCN and
            ExFuse papers use output stride 32: no dilation).
        name: str, the model's name ("gcn" or "exfuse").
        num_classes: int.
        aux_outputs: bool, return `{"logits", "ss_P2".."ss_P5", "ecre"}` (those switched on)
            for the auxiliary losses.
        gcn_kernel_size: odd int k of the GCN blocks (15, the GCN paper's best; 7 is cheaper).
        semantic_supervision: bool, SS heads with auxiliary losses on every stage.
        ss_features: "block" (GCN reads the SS head's 2nd conv, ExFuse Table 3 #2) or
            "stage" (the stage output; the heads are then only losses).
        ss_channels: int, width of the SS heads' 3x3 convs.
        semantic_embedding: bool, SEB on levels "P2".."P4".
        channel_resolution_embedding: bool, ECRE for the "P5" -> "P4" upsampling.
        densely_adjacent_prediction: bool, DAP (decoder width num_classes * k * k).
        dap_kernel_size: odd int k of DAP (3).
        decoder_width: None (num_classes, or num_classes * k * k with DAP) or an int >=
            num_classes: without DAP, a decoder this wide followed by 1x1 classifiers, e.g.
            189 for 21 classes, the "Baseline (more channels)" of ExFuse Table 5 #2.
        upsampling: "bilinear" (default, adapted) or "deconv" (the GCN paper's learnt
            transposed convs, bilinear-initialised) for every x2 step of the decoder.
        ss_loss_weight: float, total weight of the four SS losses, shared equally (0.4:
            0.1 each; the paper weights them in ImageNet pre-training, not here).
        ecre_loss_weight: float, weight of the ECRE loss (0.4).
    """
    check_bool("semantic_supervision", semantic_supervision)
    check_bool("semantic_embedding", semantic_embedding)
    check_bool("channel_resolution_embedding", channel_resolution_embedding)
    check_bool("densely_adjacent_prediction", densely_adjacent_prediction)
    if upsampling not in UPSAMPLING:
        raise ValueError(f"`upsampling` must be one of {UPSAMPLING}, received {upsampling!r}.")
    deconv = upsampling == "deconv"
    if ss_features not in SS_FEATURES:
        raise ValueError(f"`ss_features` must be one of {SS_FEATURES}, received {ss_features!r}.")
    for arg, value in (("ss_loss_weight", ss_loss_weight), ("ecre_loss_weight", ecre_loss_weight)):
        if not isinstance(value, int | float) or isinstance(value, bool) or value <= 0:
            raise ValueError(f"`{arg}` must be a positive number, received {value!r}.")
    pyramid = backbone.pyramid_outputs
    missing = [key for key in LEVELS if key not in pyramid]
    if missing:
        raise ValueError(
            f"`{name}` needs the backbone's {list(LEVELS)} features; `pyramid_outputs` has "
            f"{sorted(pyramid)}."
        )
    image = backbone.inputs[0]
    groups = dap_kernel_size**2 if densely_adjacent_prediction else 1
    width = num_classes * groups  # decoder width (189 for 21 classes with DAP, k = 3)
    if decoder_width is not None:
        is_int = isinstance(decoder_width, int) and not isinstance(decoder_width, bool)
        if not is_int or decoder_width < num_classes:
            raise ValueError(
                f"`decoder_width` must be None or an integer >= num_classes ({num_classes}), "
                f"received {decoder_width!r}."
            )
        if groups > 1 and decoder_width != width:
            raise ValueError(
                f"With DAP the decoder is num_classes * k * k = {width} wide; `decoder_width`="
                f"{decoder_width} needs `densely_adjacent_prediction=False`."
            )
        width = decoder_width
    # A decoder wider than the classes without DAP ("Baseline (more channels)", ExFuse
    # Table 5 #2) ends in 1x1 classifiers.
    widened = groups == 1 and width != num_classes
    dap = DenselyAdjacentPrediction(dap_kernel_size, name="dap") if groups > 1 else None
    aux = {}

    # Encoder features, optionally through the semantic-supervision heads.
    features = {}
    for level in LEVELS:
        x = pyramid[level]
        if semantic_supervision:
            block, scores = _semantic_supervision(x, num_classes, ss_channels, level)
            aux[f"ss_{level}"] = scores
            if ss_features == "block":
                x = block
        features[level] = x

    # GCN + BR per level, SEB on levels 1-3.
    scores = {}
    for i, level in enumerate(LEVELS):
        x = features[level]
        if semantic_embedding and level != LEVELS[-1]:
            higher = [features[h] for h in LEVELS[i + 1 :]]
            x = SemanticEmbeddingBranch(name=f"seb_{level}")([x, *higher])
        x = GlobalConvolution(width, gcn_kernel_size, name=f"gcn_{level}")(x)
        scores[level] = BoundaryRefinement(name=f"br_{level}")(x)

    # Top-down: upsample, add, BR.
    y = scores[LEVELS[-1]]
    for level in reversed(LEVELS[:-1]):
        if channel_resolution_embedding and level == LEVELS[-2]:
            up = ExplicitChannelResolutionEmbedding(width, name="ecre_upsample")([y, scores[level]])
            if dap is not None:
                aux["ecre"] = dap(up)
            elif widened:
                aux["ecre"] = keras.layers.Conv2D(num_classes, 1, name="ecre_classifier")(up)
            else:
                aux["ecre"] = up
        else:
            step = f"upsample_to_{level}"
            if deconv:
                up = DeconvolutionUpsample(width, name=step)([y, scores[level]])
            else:
                up = ResizeToReference(name=step)([y, scores[level]])
        y = keras.layers.Add(name=f"fuse_{level}")([up, scores[level]])
        y = BoundaryRefinement(name=f"br_fuse_{level}")(y)

    # Two more x2 steps (stride 4 -> 2 -> 1), each followed by BR.
    if deconv:
        y = BoundaryRefinement(name="br_up1")(DeconvolutionUpsample(width, name="upsample1")(y))
        y = DeconvolutionUpsample(width, name="upsample2")([y, image])
    else:
        y = BoundaryRefinement(name="br_up1")(UpsampleBilinear(2, name="upsample1")(y))
        y = ResizeToReference(name="upsample2")([y, image])
    y = BoundaryRefinement(name="br_up2")(y)
    logits = dap(y) if dap is not None else y
    if widened:
        logits = keras.layers.Conv2D(num_classes, 1, name="classifier")(y)

    ss_heads = [key for key in aux if key.startswith("ss_")]
    weights = {key: float(ss_loss_weight) / len(ss_heads) for key in ss_heads}
    weights["ecre"] = float(ecre_loss_weight)
    # The decoder's last step already resized to the input.
    return model_tail(
        backbone,
        logits,
        name=name,
        num_classes=num_classes,
        aux=aux,
        aux_outputs=aux_outputs,
        loss_weights=weights,
        resize=False,
    )


@register_model("gcn", default_backbone="resnet101", default_output_stride=32, tiny=TINY_GCN)
def gcn(backbone, *, num_classes, aux_outputs=False, **options):
    """GCN with boundary refinement (Peng et al., CVPR 2017), the ExFuse baseline (Table 3 #1).

    Every ExFuse component is off unless `options` switches it on (the Table 3 ablation).

    Args:
        backbone: functional `keras.Model` with `pyramid_outputs` "P2".."P5".
        num_classes: int.
        aux_outputs: bool, also return the auxiliary outputs of the components switched on.
        **options: the options of `gcn_exfuse_model` (kernel size, components, widths,
            upsampling, loss weights).
    """
    return gcn_exfuse_model(
        backbone, "gcn", num_classes=num_classes, aux_outputs=aux_outputs, **options
    )


@register_model(
    "exfuse",
    default_backbone="resnet101",
    default_output_stride=32,
    tiny=TINY_EXFUSE,
    default_backbone_options=LAYER_REARRANGEMENT,
)
def exfuse(
    backbone,
    *,
    num_classes,
    aux_outputs=False,
    semantic_supervision=True,
    semantic_embedding=True,
    channel_resolution_embedding=True,
    densely_adjacent_prediction=True,
    **options,
):
    """ExFuse on GCN (Zhang et al., ECCV 2018), SS, SEB, ECRE and DAP on (Table 3 #7).

    Layer rearrangement (LR) is on with the default backbone (`LAYER_REARRANGEMENT`); pass
    `backbone_options={"depths": (3, 4, 23, 3)}` to turn it off.

    Args:
        backbone: functional `keras.Model` with `pyramid_outputs` "P2".."P5".
        num_classes: int.
        aux_outputs: bool, also return `"ss_P2".."ss_P5"` and `"ecre"` (those switched on).
        semantic_supervision: bool, SS heads on every stage (on).
        semantic_embedding: bool, SEB on levels "P2".."P4" (on).
        channel_resolution_embedding: bool, ECRE for the "P5" -> "P4" upsampling (on).
        densely_adjacent_prediction: bool, DAP (on).
        **options: the other options of `gcn_exfuse_model` (kernel sizes, widths,
            upsampling, loss weights).
    """
    return gcn_exfuse_model(
        backbone,
        "exfuse",
        num_classes=num_classes,
        aux_outputs=aux_outputs,
        semantic_supervision=semantic_supervision,
        semantic_embedding=semantic_embedding,
        channel_resolution_embedding=channel_resolution_embedding,
        densely_adjacent_prediction=densely_adjacent_prediction,
        **options,
    )


# `training.config` checks `model.options` names against these signatures, past `**options`.
gcn.forwards_options_to = gcn_exfuse_model
exfuse.forwards_options_to = gcn_exfuse_model
