"""GFFNet: full-size parameter counts beside GFF Table 3, the tiny variant end to end, gates."""

import keras
import numpy as np
import pytest
from gff_fastfcn_numpy import fit_two_steps
from test_pspnet_model import RESNET101_7X7_STEM, parameters_without_moving_statistics

from keras_fusionseg import models
from keras_fusionseg.models.gff import gate_maps_model


def test_gffnet_resnet101_parameter_count():
    """Ours beside GFF Table 3 (PSPNet + GFF + DFP: 70.5M; their exact layout is unknown).

    Without DFP (`use_dfp=False`) the count is 71,311,955 (paper: 69.7M), see the README.
    The gates have no bias (eq. 5); the released code's biased gates add one per level.
    """
    model = models.build("gffnet", num_classes=19, backbone_options=RESNET101_7X7_STEM)
    assert parameters_without_moving_statistics(model) == 72_620_371
    biased = models.build(
        "gffnet", num_classes=19, backbone_options=RESNET101_7X7_STEM, gate_use_bias=True
    )
    assert parameters_without_moving_statistics(biased) == 72_620_371 + 4


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
