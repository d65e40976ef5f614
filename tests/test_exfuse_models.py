"""The `gcn` and `exfuse` models: ablation switches, aux losses, training, `.keras` round trip."""

import keras
import numpy as np
import pytest

from keras_fusionseg import backbones, models
from keras_fusionseg.models.exfuse import LAYER_REARRANGEMENT
from keras_fusionseg.training.losses import losses_from_loss_spec

NUM_CLASSES = 3
ALL_OFF = {
    "semantic_supervision": False,
    "semantic_embedding": False,
    "channel_resolution_embedding": False,
    "densely_adjacent_prediction": False,
}


def predict(model, x):
    """Eager inference: no XLA compile of the whole graph (slow on CPU for a two-call test)."""
    outputs = model(x, training=False)
    if isinstance(outputs, dict):
        return {key: np.asarray(value) for key, value in outputs.items()}
    return np.asarray(outputs)


def tiny(name, **overrides):
    return {**models.get_model_spec(name).tiny, **overrides}


def train_two_steps(model, rng, size=(64, 64)):
    loss, weights = losses_from_loss_spec(model.loss_spec, num_classes=NUM_CLASSES)
    # Eager steps: tracing the training graph costs more CPU than two tiny steps.
    model.compile(
        keras.optimizers.SGD(0.01, momentum=0.9), loss=loss, loss_weights=weights, run_eagerly=True
    )
    x = rng.uniform(0, 255, size=(2, *size, 3)).astype("float32")
    y = rng.integers(0, NUM_CLASSES, size=(2, *size, 1)).astype("uint8")
    targets = {key: y for key in model.loss_spec} if len(model.loss_spec) > 1 else y
    history = model.fit(x, targets, batch_size=2, epochs=2, verbose=0)
    assert np.all(np.isfinite(history.history["loss"]))
    return history


def test_exfuse_all_components_train_and_roundtrip(rng, tmp_path):
    model = models.build("exfuse", num_classes=NUM_CLASSES, aux_outputs=True, **tiny("exfuse"))
    assert set(model.loss_spec) == {"logits", "ss_P2", "ss_P3", "ss_P4", "ss_P5", "ecre"}
    # DAP: the decoder is num_classes * 3 * 3 wide (189 for 21 classes)
    assert model.get_layer("gcn_P5").output.shape[-1] == NUM_CLASSES * 9
    assert model.get_layer("br_up2").output.shape[-1] == NUM_CLASSES * 9
    # SS block features feed the GCN, SEB on levels 1-3 only
    assert model.get_layer("gcn_P2").input.shape[-1] == 16
    assert {"seb_P2", "seb_P3", "seb_P4"} <= {layer.name for layer in model.layers}
    assert "seb_P5" not in {layer.name for layer in model.layers}
    x = rng.uniform(0, 255, size=(1, 70, 50, 3)).astype("float32")  # odd sizes, no padding
    outputs = predict(model, x)
    assert outputs["logits"].shape == (1, 70, 50, NUM_CLASSES)
    assert outputs["ecre"].shape == outputs["ss_P4"].shape == (1, 5, 4, NUM_CLASSES)
    train_two_steps(model, rng)
    model.save(tmp_path / "exfuse.keras")
    clone = keras.models.load_model(tmp_path / "exfuse.keras")
    cloned = predict(clone, x)
    outputs = predict(model, x)
    for key in outputs:
        np.testing.assert_allclose(cloned[key], outputs[key], atol=1e-5)


def test_exfuse_auxiliary_weights_are_normalised():
    """The four SS losses share 0.4 (adapted from ImageNet pre-training); ECRE keeps 0.4."""
    model = models.build("exfuse", num_classes=NUM_CLASSES, aux_outputs=True, **tiny("exfuse"))
    weights = {key: weight for key, (_, weight) in model.loss_spec.items()}
    assert weights == {
        "logits": 1.0,
        "ss_P2": 0.1,
        "ss_P3": 0.1,
        "ss_P4": 0.1,
        "ss_P5": 0.1,
        "ecre": 0.4,
    }
    assert sum(weights.values()) - 1.0 < 1.0  # auxiliary terms below the main loss
    custom = models.build(
        "exfuse",
        num_classes=NUM_CLASSES,
        aux_outputs=True,
        **tiny("exfuse", ss_loss_weight=0.8, ecre_loss_weight=0.2),
    )
    assert custom.loss_spec["ss_P3"][1] == 0.2 and custom.loss_spec["ecre"][1] == 0.2
    with pytest.raises(ValueError, match="`ss_loss_weight`.*received 0"):
        models.build("exfuse", num_classes=NUM_CLASSES, **tiny("exfuse", ss_loss_weight=0))


def test_exfuse_decoder_width_without_dap_is_the_more_channels_baseline(rng):
    """ExFuse Table 5 #2: the decoder as wide as with DAP (classes * 9), DAP off."""
    options = tiny("exfuse", densely_adjacent_prediction=False, decoder_width=NUM_CLASSES * 9)
    model = models.build("exfuse", num_classes=NUM_CLASSES, aux_outputs=True, **options)
    assert model.get_layer("gcn_P5").output.shape[-1] == NUM_CLASSES * 9
    assert model.get_layer("br_up2").output.shape[-1] == NUM_CLASSES * 9
    assert model.get_layer("classifier").output.shape[-1] == NUM_CLASSES
    outputs = predict(model, rng.uniform(0, 255, size=(1, 64, 48, 3)).astype("float32"))
    assert outputs["logits"].shape == (1, 64, 48, NUM_CLASSES)
    assert outputs["ecre"].shape[-1] == NUM_CLASSES
    plain = models.build("exfuse", num_classes=NUM_CLASSES, **tiny("exfuse"))
    assert "classifier" not in {layer.name for layer in plain.layers}
    with pytest.raises(ValueError, match="needs `densely_adjacent_prediction=False`"):
        models.build("exfuse", num_classes=NUM_CLASSES, **tiny("exfuse", decoder_width=64))
    with pytest.raises(ValueError, match="`decoder_width` must be None or an integer"):
        models.build("gcn", num_classes=NUM_CLASSES, **tiny("gcn", decoder_width=1))


def test_exfuse_with_the_papers_deconvolutions(rng, tmp_path):
    options = tiny("exfuse", upsampling="deconv")
    model = models.build("exfuse", num_classes=NUM_CLASSES, aux_outputs=True, **options)
    names = {layer.name: type(layer).__name__ for layer in model.layers}
    for step in ("upsample_to_P3", "upsample_to_P2", "upsample1", "upsample2"):
        assert names[step] == "DeconvolutionUpsample", step
    assert names["ecre_upsample"] == "ExplicitChannelResolutionEmbedding"  # ECRE stays sub-pixel
    x = rng.uniform(0, 255, size=(1, 70, 50, 3)).astype("float32")  # odd sizes
    outputs = predict(model, x)
    assert outputs["logits"].shape == (1, 70, 50, NUM_CLASSES)
    model.save(tmp_path / "deconv.keras")
    clone = keras.models.load_model(tmp_path / "deconv.keras")
    np.testing.assert_allclose(predict(clone, x)["logits"], outputs["logits"], atol=1e-5)
    gcn = models.build("gcn", num_classes=NUM_CLASSES, **tiny("gcn", upsampling="deconv"))
    assert type(gcn.get_layer("upsample_to_P4")).__name__ == "DeconvolutionUpsample"
    with pytest.raises(ValueError, match="`upsampling` must be one of"):
        models.build("gcn", num_classes=NUM_CLASSES, **tiny("gcn", upsampling="nearest"))


def test_gcn_baseline_trains(rng):
    model = models.build("gcn", num_classes=NUM_CLASSES, aux_outputs=True, **tiny("gcn"))
    assert set(model.loss_spec) == {"logits"}
    names = {layer.name for layer in model.layers}
    assert {"gcn_P2", "gcn_P5", "br_fuse_P2", "br_up1", "br_up2"} <= names
    assert not names & {"dap", "ecre_upsample", "seb_P2", "ss_P2_conv1"}
    assert model.get_layer("gcn_P2").kernel_size == 5
    train_two_steps(model, rng)


@pytest.mark.parametrize(
    "component,outputs",
    [
        ("semantic_supervision", {"ss_P2", "ss_P3", "ss_P4", "ss_P5"}),
        ("channel_resolution_embedding", {"ecre"}),
        ("semantic_embedding", set()),
        ("densely_adjacent_prediction", set()),
    ],
)
def test_each_exfuse_component_switches_alone(component, outputs, rng):
    options = tiny("exfuse", **{**ALL_OFF, component: True})
    model = models.build("exfuse", num_classes=NUM_CLASSES, aux_outputs=True, **options)
    assert set(model.loss_spec) == {"logits", *outputs}
    y = model(rng.uniform(0, 255, size=(1, 64, 96, 3)).astype("float32"))
    assert y["logits"].shape == (1, 64, 96, NUM_CLASSES)


def test_semantic_supervision_from_stage_features():
    model = models.build(
        "exfuse",
        num_classes=NUM_CLASSES,
        **tiny("exfuse", ss_features="stage", semantic_embedding=False),
    )
    backbone_p2_channels = 4 * 8  # tiny stage width 8, bottleneck expansion 4
    assert model.get_layer("gcn_P2").input.shape[-1] == backbone_p2_channels


def test_exfuse_errors():
    with pytest.raises(ValueError, match="ss_features"):
        models.build("exfuse", num_classes=3, **tiny("exfuse", ss_features="conv2"))
    with pytest.raises(ValueError, match="semantic_embedding"):
        models.build("exfuse", num_classes=3, **tiny("exfuse", semantic_embedding="yes"))
    with pytest.raises(ValueError, match="kernel_size"):
        models.build("gcn", num_classes=3, **tiny("gcn", gcn_kernel_size=4))


def conv_macs(model):
    """Multiply-adds of the Conv2D layers of a model with a static input size."""
    total = 0
    for layer in model.layers:
        if isinstance(layer, keras.layers.Conv2D):
            kh, kw, cin, cout = layer.kernel.shape
            _, h, w, _ = layer.output.shape
            total += kh * kw * cin * cout * h * w
    return total


def test_layer_rearrangement_keeps_macs():
    """{3, 4, 23, 3} -> {8, 8, 9, 8} blocks at the same widths: identical multiply-adds.

    (At full width and 224 x 224, `utils.counting.count_macs` gives 7,568,146,432 for both.)
    """
    narrow = (8, 16, 32, 64)
    counts = []
    for depths in ((3, 4, 23, 3), LAYER_REARRANGEMENT["depths"]):
        backbone = backbones.build_backbone(
            "resnet101", input_shape=(64, 64, 3), depths=depths, stage_widths=narrow, stem_width=16
        )
        counts.append(conv_macs(backbone))
    assert counts[0] == counts[1] > 0
    assert LAYER_REARRANGEMENT["stage_widths"] == (64, 128, 256, 512)


# MobileNetV2 (default padding) halves odd sizes down: 88 -> 44 -> 22 -> 11 -> 5, so ECRE's x2
# of "P5" (10) is narrower than "P4" (11), and the deconvolutions' last x2 is smaller than the
# image on 67 x 45. The exact-factor upsamplers fit their output to the finer size.
@pytest.mark.parametrize(
    "name, options",
    [("exfuse", {"ss_channels": 8}), ("gcn", {"upsampling": "deconv"})],
)
@pytest.mark.parametrize("size", [(64, 88), (67, 45)])
def test_exact_x2_upsampling_on_a_backbone_that_halves_odd_sizes_down(name, options, size):
    model = models.build(
        name,
        num_classes=3,
        backbone="mobilenetv2",
        backbone_options={"alpha": 0.35},
        output_stride=32,
        gcn_kernel_size=3,
        **options,
    )
    logits = np.asarray(model(np.zeros((1, *size, 3), np.float32)))
    assert logits.shape == (1, *size, 3) and np.all(np.isfinite(logits))
