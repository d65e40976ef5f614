"""GFFNet: full-size parameter counts beside GFF Table 3, the tiny variant end to end, gates."""

import keras
import numpy as np
import pytest
from gff_fastfcn_numpy import fit_two_steps
from test_pspnet_model import (
    RESNET101_7X7_STEM,
    parameters_without_moving_statistics,
    resnet_bottleneck_parameters,
)

from keras_fusionseg import models
from keras_fusionseg.backbones import build_backbone
from keras_fusionseg.models.gff import gate_maps_model


def gffnet_head_parameters(
    stage_channels,
    num_classes,
    *,
    bins=4,
    head_width=512,
    gff_width=256,
    dfp_width=256,
    dfp_kernel_size=1,
    use_dfp=True,
    per_channel_gates=False,
    gate_use_bias=False,
    aux_width=None,
):
    """Trainable parameters of the GFFNet head from its layout (GFF Fig. 3, eqs. 5-6).

    `stage_channels`: the backbone's P2..P5 channels. Every conv-BN has a bias-free conv and BN
    gamma/beta; the 1x1 classifiers have a bias.
    """
    top = stage_channels[-1]
    branch = top // bins  # PSP pooling: each 1x1 branch to C / len(bins)
    count = bins * (top * branch + 2 * branch)
    count += 9 * (top + bins * branch) * head_width + 2 * head_width  # PSP bottleneck
    count += sum(c * gff_width + 2 * gff_width for c in stage_channels)  # 1x1 reductions
    gate = gff_width if per_channel_gates else 1
    count += len(stage_channels) * (gff_width * gate + (gate if gate_use_bias else 0))
    count += 2 * len(stage_channels) * (9 * gff_width * gff_width + 2 * gff_width)  # refine
    levels = [head_width] + [gff_width] * len(stage_channels)  # y_0, then deepest first
    if use_dfp:
        k2 = dfp_kernel_size**2
        for i in range(1, len(levels) + 1):  # H_i on [y_0, X~_1, ..., X~_{i-1}]
            count += k2 * sum(levels[:i]) * dfp_width + 2 * dfp_width
        classifier_in = len(levels) * dfp_width
    else:
        classifier_in = sum(levels)
    count += classifier_in * num_classes + num_classes
    if aux_width:
        p4 = stage_channels[-2]
        count += 9 * p4 * aux_width + 2 * aux_width + aux_width * num_classes + num_classes
    return count


@pytest.mark.slow
def test_gffnet_resnet101_parameter_count():
    """Ours beside GFF Table 3 (PSPNet + GFF + DFP: 70.5M; their exact layout is unknown).

    Derived: the He et al. ResNet-101 plus the head above gives 72,620,371; without DFP
    (`use_dfp=False`) 71,311,955 (paper: 69.7M), see the README.
    """
    backbone, _ = resnet_bottleneck_parameters()
    model = models.build("gffnet", num_classes=19, backbone_options=RESNET101_7X7_STEM)
    count = parameters_without_moving_statistics(model)
    assert count == backbone + gffnet_head_parameters((256, 512, 1024, 2048), 19)
    assert abs(count - 70.5e6) / 70.5e6 < 0.05  # within 5% of Table 3's 70.5M


@pytest.mark.parametrize(
    "options",
    [
        {},
        {"use_dfp": False},
        {"per_channel_gates": True, "gate_use_bias": True},
        {"dfp_kernel_size": 3, "bins": (1, 3)},
        {"aux_outputs": True},
    ],
    ids=["default", "no_dfp", "channel_gates_bias", "dfp3_two_bins", "aux"],
)
def test_gffnet_tiny_parameter_count_follows_the_options(options):
    tiny = models.get_model_spec("gffnet").tiny
    model = models.build("gffnet", num_classes=5, **{**tiny, **options})
    backbone = build_backbone(tiny["backbone"], output_stride=8, **tiny["backbone_options"])
    head = parameters_without_moving_statistics(model) - parameters_without_moving_statistics(
        backbone
    )
    widths = {k: tiny[k] for k in ("head_width", "gff_width", "dfp_width")}
    layout = {k: v for k, v in options.items() if k not in ("aux_outputs", "bins")}
    expected = gffnet_head_parameters(
        [backbone.pyramid_channels[key] for key in ("P2", "P3", "P4", "P5")],
        5,
        bins=len(options.get("bins", (1, 2, 3, 6))),
        aux_width=tiny["aux_width"] if options.get("aux_outputs") else None,
        **widths,
        **layout,
    )
    assert head == expected


def test_gffnet_tiny_any_size_roundtrip_training_and_gates(tmp_path, rng):
    spec = models.get_model_spec("gffnet")
    model = models.build("gffnet", num_classes=4, **spec.tiny)
    for size in [(64, 64), (72, 96), (65, 81)]:
        x = rng.uniform(0, 255, size=(1, *size, 3)).astype("float32")
        assert model(x).shape == (1, *size, 4)
    path = tmp_path / "gffnet.keras"
    model.save(path)
    clone = keras.models.load_model(path)
    np.testing.assert_allclose(clone(x), model(x), atol=1e-5)
    gates = gate_maps_model(model)(x)
    assert [tuple(g.shape) for g in gates] == [(1, 17, 21, 1)] + [(1, 9, 11, 1)] * 3
    train = models.build("gffnet", num_classes=4, aux_outputs=True, **spec.tiny)
    assert train.loss_spec == {"logits": ("segmentation", 1.0), "aux": ("segmentation", 0.4)}
    assert np.isfinite(fit_two_steps(train, 4, rng)["loss"]).all()


def test_gffnet_released_code_variant_without_dfp(rng):
    spec = models.get_model_spec("gffnet")
    model = models.build(
        "gffnet",
        num_classes=3,
        per_channel_gates=True,
        sequential_fusion=True,
        use_dfp=False,
        **spec.tiny,
    )
    x = rng.uniform(0, 255, size=(1, 64, 80, 3)).astype("float32")
    assert model(x).shape == (1, 64, 80, 3)
    gates = gate_maps_model(model)(x)
    assert len(gates) == 4 and gates[0].shape == (1, 16, 20, spec.tiny["gff_width"])


def test_gffnet_rejects_bad_options():
    tiny = models.get_model_spec("gffnet").tiny
    with pytest.raises(ValueError, match="`gff_width`.*received -2"):
        models.build("gffnet", num_classes=3, **{**tiny, "gff_width": -2})
    with pytest.raises(ValueError, match="`use_dfp` must be a bool"):
        models.build("gffnet", num_classes=3, **{**tiny, "use_dfp": "no"})
    with pytest.raises(ValueError, match="no GatedFullyFusion layer named 'gff'"):
        gate_maps_model(
            models.build("pspnet", num_classes=3, **models.get_model_spec("pspnet").tiny)
        )
    with pytest.raises(ValueError, match="`dropout`"):
        models.build("gffnet", num_classes=3, **{**tiny, "dropout": 1.5})


def test_visualize_gates_script_writes_one_png_per_level(rng, load_script):
    import tensorflow as tf

    script = load_script("visualize_gates")
    gates = [
        rng.uniform(size=(1, 8 // s, 10 // s, c)).astype("float32")
        for s, c in ((1, 1), (2, 1), (2, 3))
    ]
    gates[0][0, 0, 0, 0], gates[0][0, -1, -1, 0] = 0.0, 1.0
    pngs = script.gate_pngs(gates, 16, 20)
    assert len(pngs) == 3
    first = tf.io.decode_png(pngs[0]).numpy()
    assert first.shape == (16, 20, 1) and first.dtype == np.uint8
    assert first[0, 0, 0] == 0 and first[-1, -1, 0] == 255
    with pytest.raises(ValueError, match="--image: no such file 'nope.png'"):
        script.read_image("nope.png")
