"""PSPNet: the GFF paper's baseline (Table 3) at full size, and the tiny variant end to end."""

import keras
import numpy as np
import pytest
from gff_fastfcn_numpy import fit_two_steps

from keras_fusionseg import models

RESNET101_7X7_STEM = {"use_bias": False}  # He et al. layout: 7x7 stem, convs without bias


def parameters_without_moving_statistics(model):
    return sum(int(np.prod(w.shape)) for w in model.weights if "moving_" not in w.path)


def resnet_bottleneck_parameters(depths=(3, 4, 23, 3), widths=(64, 128, 256, 512), stem=64):
    """Trainable parameters of a bias-free bottleneck ResNet (He et al., CVPR 2016, Table 1).

    Stem 7x7 conv + BN; per block 1x1 (in -> w), 3x3 (w -> w), 1x1 (w -> 4w), each with BN
    (gamma, beta); the first block of a stage adds a 1x1 projection shortcut with BN. ResNet-101
    gives 42,500,160: torchvision's resnet101 (44,549,160) without its 2048 x 1000 classifier.
    """
    count, channels = 7 * 7 * 3 * stem + 2 * stem, stem
    for depth, width in zip(depths, widths, strict=True):
        for block in range(depth):
            count += channels * width + 9 * width * width + width * 4 * width + 2 * 6 * width
            if block == 0:
                count += channels * 4 * width + 2 * 4 * width
            channels = 4 * width
    return count, channels


@pytest.mark.slow
def test_pspnet_resnet101_matches_gff_table3_baseline():
    backbone, channels = resnet_bottleneck_parameters()
    assert backbone == 44_549_160 - (2048 * 1000 + 1000)
    # PSPNet head (Zhao et al. Sec. 3.3): four 1x1 conv-BN branches to 2048 / 4 = 512, a 3x3
    # conv-BN on the 2048 + 4 * 512 concatenation to 512, then 1x1 logits with bias.
    pooling = 4 * (channels * 512 + 2 * 512)
    bottleneck = 9 * (channels + 4 * 512) * 512 + 2 * 512
    logits = 512 * 19 + 19
    model = models.build("pspnet", num_classes=19, backbone_options=RESNET101_7X7_STEM)
    count = parameters_without_moving_statistics(model)
    assert count == backbone + pooling + bottleneck + logits  # 65,583,699
    assert abs(count - 65.6e6) <= 0.05e6  # GFF Table 3: PSPNet 65.6M


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
