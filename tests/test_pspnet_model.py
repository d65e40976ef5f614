"""PSPNet: the GFF paper's baseline (Table 3) at full size, and the tiny variant end to end."""

import keras
import numpy as np
import pytest
from gff_fastfcn_numpy import fit_two_steps

from keras_fusionseg import models

RESNET101_7X7_STEM = {"use_bias": False}  # He et al. layout: 7x7 stem, convs without bias


def parameters_without_moving_statistics(model):
    return sum(int(np.prod(w.shape)) for w in model.weights if "moving_" not in w.path)


def test_pspnet_resnet101_matches_gff_table3_baseline():
    model = models.build("pspnet", num_classes=19, backbone_options=RESNET101_7X7_STEM)
    count = parameters_without_moving_statistics(model)
    assert count == 65_583_699
    assert abs(count - 65.6e6) <= 0.1e6


def test_pspnet_tiny_any_size_roundtrip_and_training(tmp_path, rng):
    spec = models.get_model_spec("pspnet")
    model = models.build("pspnet", num_classes=4, input_shape=(None, None, 3), **spec.tiny)
    for size in [(64, 64), (72, 96), (65, 81)]:
        x = rng.uniform(0, 255, size=(1, *size, 3)).astype("float32")
        assert model(x).shape == (1, *size, 4)
    path = tmp_path / "pspnet.keras"
    model.save(path)
    np.testing.assert_allclose(keras.models.load_model(path)(x), model(x), atol=1e-5)
    train = models.build("pspnet", num_classes=4, aux_outputs=True, **spec.tiny)
    assert train.loss_spec == {"logits": ("segmentation", 1.0), "aux": ("segmentation", 0.4)}
    history = fit_two_steps(train, 4, rng)
    assert np.isfinite(history["loss"][-1])


def test_pspnet_rejects_bad_options():
    spec = models.get_model_spec("pspnet")
    with pytest.raises(ValueError, match="`head_width`.*received 0"):
        models.build(
            "pspnet",
            num_classes=3,
            head_width=0,
            **{k: v for k, v in spec.tiny.items() if k != "head_width"},
        )
    with pytest.raises(ValueError, match="`bins`"):
        models.build("pspnet", num_classes=3, **{**spec.tiny, "bins": ()})
