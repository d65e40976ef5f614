"""EncNet, FastFCN (JPU + EncNet / ASPP / PSP heads) and the dilated counterparts."""

import keras
import numpy as np
import pytest
from gff_fastfcn_numpy import fit_two_steps

from keras_fusionseg import models

FASTFCN_FAMILY = ["encnet", "fastfcn_encnet", "dilated_aspp", "fastfcn_aspp", "fastfcn_psp"]


@pytest.mark.slow
def test_jpu_replaces_dilation_at_exactly_the_reference_jpu_cost():
    """Same ResNet-50 weights at OS8 or OS32: FastFCN adds exactly the JPU's parameters,
    and its EncNet head reduces 2048 -> 512 with a 1x1 conv where EncNet uses a 3x3."""
    dilated = models.build("encnet", num_classes=59)
    fast = models.build("fastfcn_encnet", num_classes=59)
    assert fast.get_layer("jpu").count_params() == 19_755_008
    reduce_3x3_minus_1x1 = 2048 * 512 * (9 - 1)
    assert fast.count_params() - dilated.count_params() == 19_755_008 - reduce_3x3_minus_1x1


@pytest.mark.parametrize(("name", "kernel"), [("encnet", 3), ("fastfcn_encnet", 1)])
def test_encnet_head_reduction_kernel_follows_the_reference(name, kernel):
    """EncNet head: 3x3 conv to 512 on the dilated backbone, 1x1 after JPU (option to swap)."""
    tiny = models.get_model_spec(name).tiny
    model = models.build(name, num_classes=3, **tiny)
    assert model.get_layer("encoding_reduce").conv.kernel.shape[:2] == (kernel, kernel)
    other = 4 - kernel
    swapped = models.build(name, num_classes=3, reduce_kernel_size=other, **tiny)
    assert swapped.get_layer("encoding_reduce").conv.kernel.shape[:2] == (other, other)
    with pytest.raises(ValueError, match="`reduce_kernel_size`.*received 5"):
        models.build(name, num_classes=3, reduce_kernel_size=5, **tiny)


@pytest.mark.parametrize("name", FASTFCN_FAMILY)
def test_tiny_model_any_size_roundtrip_and_training(name, tmp_path, rng):
    spec = models.get_model_spec(name)
    model = models.build(name, num_classes=4, aux_outputs=True, **spec.tiny)
    expected_spec = {"logits": ("segmentation", 1.0), "aux": ("segmentation", 0.2)}
    if "encnet" in name:
        expected_spec["se"] = ("presence", 0.2)
    assert model.loss_spec == expected_spec
    assert ("jpu" in {layer.name for layer in model.layers}) == name.startswith("fastfcn")
    for size in [(64, 64), (96, 72)]:
        x = rng.uniform(0, 255, size=(2, *size, 3)).astype("float32")
        outputs = model(x)
        assert outputs["logits"].shape == (2, *size, 4)
        if "se" in outputs:
            assert outputs["se"].shape == (2, 4)
    path = tmp_path / f"{name}.keras"
    model.save(path)
    clone = keras.models.load_model(path)
    for key, value in clone(x).items():
        np.testing.assert_allclose(value, outputs[key], atol=1e-5, err_msg=key)
    assert np.isfinite(fit_two_steps(model, 4, rng)["loss"]).all()


def test_fastfcn_rejects_bad_options():
    tiny = models.get_model_spec("fastfcn_encnet").tiny
    with pytest.raises(ValueError, match="`jpu_width`.*received 0"):
        models.build("fastfcn_encnet", num_classes=3, **{**tiny, "jpu_width": 0})
    with pytest.raises(ValueError, match="`num_codes`"):
        models.build("fastfcn_encnet", num_classes=3, **{**tiny, "num_codes": 0})


@pytest.mark.parametrize("name", ["dilated_aspp", "fastfcn_aspp"])
def test_aspp_head_projection_dropout_of_the_reference(name):
    tiny = models.get_model_spec(name).tiny
    assert models.build(name, num_classes=3, **tiny).get_layer("aspp").dropout == 0.5
    other = models.build(name, num_classes=3, projection_dropout=0.1, **tiny)
    assert other.get_layer("aspp").dropout == 0.1


@pytest.mark.parametrize("name", ["pspnet", "encnet", "fastfcn_psp"])
def test_head_dropout_drops_whole_channels(name):
    """Dropout2d of the references: a channel is zeroed everywhere or kept everywhere."""
    tiny = models.get_model_spec(name).tiny
    model = models.build(name, num_classes=3, aux_outputs=True, **tiny)
    for layer_name in ("logits_conv_dropout", "aux_logits_dropout"):
        layer = model.get_layer(layer_name)
        y = np.asarray(layer(np.ones((2, 6, 5, 64), "float32"), training=True))
        per_channel = y.reshape(2, 30, 64)
        assert np.all(per_channel.min(axis=1) == per_channel.max(axis=1)), layer_name
        assert 0 < np.count_nonzero(per_channel[:, 0]) < 128
