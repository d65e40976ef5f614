"""DUpsampling decoder model (`dunet`).

Tian, He, Shen, Yan, "Decoders Matter for Semantic Segmentation: Data-Dependent Decoding
Enables Flexible Feature Aggregation", CVPR 2019, Fig. 2: the chosen low-level features are
**downsampled** (bilinear) to the resolution of the last backbone features and concatenated
with them (flexible aggregation, eq. 8), a light convolutional decoder f follows, a 1x1
convolution predicts the C~-dimensional code, and `DUpsampling` (fixed W, Sec. 3.1) brings it
to full resolution. The `"logits"` output is z / T with the learnable temperature of eq. 6
(`AdaptiveTemperatureSoftmax`), so softmax cross-entropy on the logits is the paper's loss.

Defaults: ResNet-50 "modified as in [DeepLabv3+]" (Sec. 4, implementation details), i.e. with
the three-conv deep stem (the model's default backbone options), at output stride 16, and fused
features conv1_3 ("P1", the third stem conv) + block3 ("P4", b3u6c3), Table 2's best (Table 2's
"N/A" row equals Table 1's OS16 DUpsampling result); with `backbone_options={"deep_stem":
False}` "P1" is the 7x7 conv1 instead. C~ = 64 for ResNet, 128 for Xception.

Decoder layouts (`decoder`):
- `"light"` (default; the paper's point, Table 3: the proposed decoder costs 1.15-1.56B FLOPS
  against 5.53-22.34B for the vanilla one): after the downsampling, each fused low-level map
  gets a 1x1 conv-BN-ReLU to `low_level_channels` (48, DeepLabv3+'s reduction) and the last
  features a 1x1 conv-BN-ReLU to `decoder_channels` (256); the concatenation (352 channels)
  goes through one 3x3 conv-BN-ReLU (`decoder_convs`) and the 1x1 code conv. The paper does
  not give the widths; these are ours, and its FLOPS convention does not reproduce.
- `"concat"`: the raw maps concatenated (3,200 channels for the default fusion) and two 3x3
  conv-BN-ReLU (`decoder_convs`); about 5x the decoder MACs of `"light"`.

Input sizes: DUpsampling gives r * ceil(H / r) rows; the model crops bottom/right to the
input size, which is the paper's padding of H and W to multiples of r (Sec. 3.1). So any
input size works and the output stride need not divide it. On MobileNetV2 with its default
padding (odd sizes halved down) it gives r * h rows with h <= ceil(H / r); the last rows of
the input (fewer than r) then repeat the last predicted row (`fit_to_reference`).

W, P and the mean come from `fit_dupsampling` (`keras_fusionseg.layers.dupsampling_pca`);
the builder takes the `DUpsamplingBasis`, its `.npz` file, or a `(W, mean)` pair. Without
one, W is random orthonormal and the mean 1/num_classes (see `DUpsampling`): the model
builds and trains, but the decoder is then not data-dependent. W is a weight of the model,
so it is saved in `.keras` files.
"""

import os

import keras
import numpy as np

from keras_fusionseg.layers.common import ConvBNReLU, ResizeToReference, check_positive_int
from keras_fusionseg.layers.dupsampling import AdaptiveTemperatureSoftmax, DUpsampling
from keras_fusionseg.layers.dupsampling_pca import DUpsamplingBasis, load_dupsampling_basis
from keras_fusionseg.models.heads import model_tail
from keras_fusionseg.models.registry import register_model

TINY = {
    "backbone": "resnet50",
    # [-1, 1] inputs keep untrained activations O(1) (see `models.exfuse`).
    "backbone_options": {
        "depths": (1, 1, 1, 1),
        "stage_widths": (8, 16, 32, 64),
        "stem_width": 16,
        "normalization": "tf",
    },
    "decoder_channels": 16,
    "code_channels": 16,
}


def _output_stride(backbone):
    output_stride = getattr(backbone, "output_stride", None)
    if output_stride is None:
        raise ValueError(
            "`dunet` needs a backbone with an `output_stride` attribute (the DUpsampling ratio)."
        )
    return int(output_stride)


def _basis(dupsampling_basis):
    """(W, mean) arrays or (None, None) from a basis, an .npz path or a (W, mean) pair."""
    if dupsampling_basis is None:
        return None, None, None
    if isinstance(dupsampling_basis, str | os.PathLike):
        dupsampling_basis = load_dupsampling_basis(dupsampling_basis)
    if isinstance(dupsampling_basis, DUpsamplingBasis):
        return dupsampling_basis.reconstruction, dupsampling_basis.mean, dupsampling_basis.ratio
    if isinstance(dupsampling_basis, list | tuple) and len(dupsampling_basis) == 2:
        w, mean = (np.asarray(a, np.float32) for a in dupsampling_basis)
        return w, mean, None
    raise ValueError(
        "`dupsampling_basis` must be None, a DUpsamplingBasis, a path to its .npz file or a "
        f"(W, mean) pair of arrays, received {type(dupsampling_basis).__name__}."
    )


DECODER_LAYOUTS = ("light", "concat")
# The ResNet-50 of the paper is "modified as in [5]" (DeepLabv3+): three-conv deep stem.
DUNET_BACKBONE = {"deep_stem": True}


@register_model(
    "dunet",
    default_backbone="resnet50",
    default_output_stride=16,
    tiny=TINY,
    default_backbone_options=DUNET_BACKBONE,
)
def dunet(
    backbone,
    *,
    num_classes,
    aux_outputs=False,
    fused_features=("P1", "P4"),
    decoder="light",
    decoder_convs=None,
    decoder_channels=256,
    low_level_channels=48,
    code_channels=None,
    dupsampling_basis=None,
    trainable_reconstruction=False,
):
    """DUpsampling decoder with flexible feature aggregation (Tian et al., CVPR 2019, Fig. 2).

    Args:
        backbone: functional `keras.Model` with `pyramid_outputs` ("P5" plus the fused
            keys) and `output_stride` (16 or 32 in the paper; the DUpsampling ratio r).
        num_classes: int.
        aux_outputs: bool, return `{"logits": ...}` (the paper has no auxiliary loss).
        fused_features: tuple of pyramid keys downsampled and concatenated with "P5"
            (eq. 8); () for none. Default ("P1", "P4") = conv1_3 + b3u6c3 (Table 2 best).
        decoder: str, `"light"` (1x1 reductions before the fusion, Fig. 2 / Table 3) or
            `"concat"` (the heavier variant on the raw concatenation); see the module doc.
        decoder_convs: int >= 0 or None, 3x3 conv-BN-ReLU layers after the concatenation;
            None = 1 for `"light"`, 2 for `"concat"`.
        decoder_channels: int, their width (and that of the reduced last features).
        low_level_channels: int, width of each fused map's 1x1 reduction (`"light"` only).
        code_channels: int C~ or None (64, or 128 on an Xception backbone; taken from the
            basis when one is given).
        dupsampling_basis: None, a `DUpsamplingBasis`, a path to its `.npz` file, or a
            (W (N, C~), mean (N,)) pair; N must be r * r * num_classes.
        trainable_reconstruction: bool, fine-tune W and the mean (the paper keeps them fixed).
    """
    ratio = _output_stride(backbone)
    w, mean, basis_ratio = _basis(dupsampling_basis)
    if basis_ratio is not None and basis_ratio != ratio:
        raise ValueError(
            f"`dupsampling_basis` was fitted with ratio {basis_ratio}, but the backbone's output "
            f"stride is {ratio}; fit it with ratio={ratio} or change `output_stride`."
        )
    if w is not None:
        n = ratio * ratio * num_classes
        if w.ndim != 2 or w.shape[0] != n:
            raise ValueError(
                f"`dupsampling_basis` W must have {n} = {ratio}*{ratio}*{num_classes} rows "
                f"(ratio * ratio * num_classes), received shape {w.shape}."
            )
        if code_channels is not None and code_channels != w.shape[1]:
            raise ValueError(
                f"`code_channels`={code_channels} disagrees with the basis's C~ = {w.shape[1]}."
            )
        code_channels = int(w.shape[1])
    if code_channels is None:
        code_channels = 128 if backbone.name.startswith("xception") else 64
    if decoder not in DECODER_LAYOUTS:
        raise ValueError(f"`decoder` must be one of {DECODER_LAYOUTS}, received {decoder!r}.")
    if decoder_convs is None:
        decoder_convs = 1 if decoder == "light" else 2
    check_positive_int("decoder_channels", decoder_channels)
    check_positive_int("low_level_channels", low_level_channels)
    if not isinstance(decoder_convs, int) or isinstance(decoder_convs, bool) or decoder_convs < 0:
        raise ValueError(f"`decoder_convs` must be an integer >= 0, received {decoder_convs!r}.")
    fused_features = tuple(fused_features)
    pyramid = backbone.pyramid_outputs
    for key in (*fused_features, "P5"):
        if key not in pyramid:
            raise ValueError(
                f"`fused_features` key {key!r} is not in the backbone's `pyramid_outputs` "
                f"({sorted(pyramid)})."
            )

    # Layers and functional graph.
    image = backbone.inputs[0]
    last = pyramid["P5"]
    light = decoder == "light"
    parts = [ConvBNReLU(decoder_channels, 1, name="reduce_P5")(last) if light else last]
    for key in fused_features:
        # Eq. 8: downsample first, so all of f runs at the lowest resolution.
        low = ResizeToReference(name=f"downsample_{key}")([pyramid[key], last])
        parts.append(ConvBNReLU(low_level_channels, 1, name=f"reduce_{key}")(low) if light else low)
    x = keras.layers.Concatenate(name="aggregate")(parts) if len(parts) > 1 else parts[0]
    for i in range(decoder_convs):
        x = ConvBNReLU(decoder_channels, 3, name=f"decoder_conv{i + 1}")(x)
    code = keras.layers.Conv2D(code_channels, 1, name="code_conv")(x)
    scores = DUpsampling(
        ratio,
        num_classes,
        code_channels,
        reconstruction=w,
        mean=mean,
        trainable_reconstruction=trainable_reconstruction,
        name="dupsampling",
    )([code, image])
    logits = AdaptiveTemperatureSoftmax(name="temperature")(scores)
    # DUpsampling already crops to the input size.
    return model_tail(
        backbone,
        logits,
        name="dunet",
        num_classes=num_classes,
        aux_outputs=aux_outputs,
        resize=False,
    )
