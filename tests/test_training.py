"""Losses, schedule, optimizer, config validation and a tiny end-to-end `train`."""

import json
import math
import os
import pathlib
import types

import keras
import numpy as np
import pytest
import tensorflow as tf
import training_tiny_backbone  # noqa: F401  (registers "tiny_test_backbone")
from config_files import load_config, shipped_configs

from keras_fusionseg import models
from keras_fusionseg.training import callbacks as callbacks_lib
from keras_fusionseg.training import config as config_lib
from keras_fusionseg.training import losses, optimizers, trainer

REPO = pathlib.Path(__file__).resolve().parents[1]


def numpy_cross_entropy(logits, labels):
    shifted = logits - logits.max(-1, keepdims=True)
    log_probs = shifted - np.log(np.exp(shifted).sum(-1, keepdims=True))
    return -np.take_along_axis(log_probs, labels[..., None], axis=-1)[..., 0]


def test_segmentation_cross_entropy_matches_numpy(rng):
    logits = rng.normal(size=(2, 4, 5, 3)).astype("float32")
    labels = rng.integers(0, 3, size=(2, 4, 5))
    labels[0, 0, :3] = 255
    weights = [0.5, 1.0, 2.0]
    valid = labels != 255
    pixel = numpy_cross_entropy(logits[valid], labels[valid]) * np.take(weights, labels[valid])
    expected = pixel.sum() / valid.sum()
    loss = losses.SegmentationCrossEntropy(3, class_weights=weights)
    np.testing.assert_allclose(float(loss(labels, logits)), expected, rtol=1e-5)
    # OHEM: the mean of the ceil(0.25 n) largest weighted pixel losses.
    kept = np.sort(pixel)[::-1][: math.ceil(0.25 * valid.sum())]
    ohem = losses.SegmentationCrossEntropy(3, class_weights=weights, ohem_fraction=0.25)
    np.testing.assert_allclose(float(ohem(labels, logits)), kept.mean(), rtol=1e-5)


def test_segmentation_loss_resizes_labels_to_coarse_logits(rng):
    labels = np.repeat(np.repeat(rng.integers(0, 3, size=(1, 2, 2)), 4, axis=1), 4, axis=2)
    logits = rng.normal(size=(1, 2, 2, 3)).astype("float32")
    expected = numpy_cross_entropy(logits, labels[:, ::4, ::4]).mean()
    loss = losses.SegmentationCrossEntropy(3)
    np.testing.assert_allclose(float(loss(labels[..., None], logits)), expected, rtol=1e-5)


def test_presence_loss_is_binary_cross_entropy_of_present_classes():
    labels = np.array([[[0, 0], [2, 255]], [[1, 1], [1, 1]]])
    logits = np.array([[1.0, -1.0, 0.5], [0.0, 2.0, -3.0]], "float32")
    targets = np.array([[1, 0, 1], [0, 1, 0]], "float32")
    expected = np.mean(np.maximum(logits, 0) - logits * targets + np.log1p(np.exp(-np.abs(logits))))
    value = losses.PresenceCrossEntropy(3)(labels, logits)
    np.testing.assert_allclose(float(value), expected, rtol=1e-5)


def test_losses_from_loss_spec_maps_kinds_and_weights():
    spec = {
        "logits": (models.SEGMENTATION, 1.0),
        "aux": (models.SEGMENTATION, 0.4),
        "se": (models.PRESENCE, 0.2),
    }
    loss, weights = losses.losses_from_loss_spec(
        spec, num_classes=3, loss_weight_overrides={"aux": 0.3}
    )
    assert isinstance(loss["se"], losses.PresenceCrossEntropy)
    assert weights == {"logits": 1.0, "aux": 0.3, "se": 0.2}
    single, none = losses.losses_from_loss_spec(
        {"logits": (models.SEGMENTATION, 1.0)}, num_classes=3
    )
    assert isinstance(single, losses.SegmentationCrossEntropy) and none is None
    with pytest.raises(ValueError, match="outputs \\['typo'\\]"):
        losses.losses_from_loss_spec(spec, num_classes=3, loss_weight_overrides={"typo": 1.0})
    with pytest.raises(ValueError, match="ohem_fraction"):
        losses.SegmentationCrossEntropy(3, ohem_fraction=0)


def test_poly_decay_with_warmup_matches_formula():
    schedule = optimizers.PolyDecay(0.1, 100, power=0.9, warmup_steps=10, warmup_start_factor=0.1)
    for step in (0, 5, 10, 55, 100, 150):
        if step < 10:
            expected = 0.1 * (0.1 + 0.9 * step / 10)
        else:
            expected = 0.1 * (1 - min(step - 10, 90) / 90) ** 0.9
        np.testing.assert_allclose(float(schedule(step)), expected, rtol=1e-5, atol=1e-7)
    restored = optimizers.PolyDecay.from_config(schedule.get_config())
    assert float(restored(55)) == pytest.approx(float(schedule(55)))


def test_sgd_with_l2_decays_kernels_only_through_momentum():
    inputs = keras.Input((4,))
    layer = keras.layers.Dense(2)
    model = keras.Model(inputs, layer(inputs))
    kernel0, bias0 = (v.numpy().copy() for v in (layer.kernel, layer.bias))
    grads = [np.full_like(kernel0, 0.5), np.full_like(bias0, 0.5)]
    optimizer = optimizers.build_optimizer("sgd", 0.1, model=model, momentum=0.9, weight_decay=0.01)
    velocity_k, velocity_b = np.zeros_like(kernel0), np.zeros_like(bias0)
    kernel, bias = kernel0, bias0
    for _ in range(2):
        optimizer.apply([tf.constant(g) for g in grads], model.trainable_variables)
        velocity_k = 0.9 * velocity_k - 0.1 * (grads[0] + 0.01 * kernel)
        velocity_b = 0.9 * velocity_b - 0.1 * grads[1]
        kernel, bias = kernel + velocity_k, bias + velocity_b
    np.testing.assert_allclose(layer.kernel.numpy(), kernel, rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(layer.bias.numpy(), bias, rtol=1e-5, atol=1e-7)
    assert optimizers.SGDWithL2.from_config(optimizer.get_config()).l2 == 0.01


@pytest.mark.parametrize("name", ["sgd", "adamw"])
def test_global_clipnorm_rescales_each_step_to_that_norm(name):
    """Clipped steps on gradients of global norm 1e3 and 10 equal unclipped steps on the same
    gradients rescaled to norm 1 (and differ from unclipped steps on the raw ones)."""
    rng = np.random.default_rng(0)
    shapes = [(4, 2), (2,)]
    raw = []
    for norm in (1e3, 10.0):
        grads = [rng.normal(size=shape).astype("float32") for shape in shapes]
        total = np.sqrt(sum(np.sum(g**2) for g in grads))
        raw.append([g * norm / total for g in grads])
    unit = [[g / np.sqrt(sum(np.sum(h**2) for h in step)) for g in step] for step in raw]

    def train(grad_steps, **options):
        keras.utils.set_random_seed(1)
        inputs = keras.Input((4,))
        model = keras.Model(inputs, keras.layers.Dense(2)(inputs))
        optimizer = optimizers.build_optimizer(name, 0.1, model=model, **options)
        for grads in grad_steps:
            optimizer.apply([tf.constant(g) for g in grads], model.trainable_variables)
        return [v.numpy() for v in model.trainable_variables], optimizer

    clipped, optimizer = train(raw, global_clipnorm=1.0)
    reference, unclipped = train(unit)
    for got, expected in zip(clipped, reference, strict=True):
        np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-6)
    assert not all(np.allclose(a, b) for a, b in zip(train(raw)[0], reference, strict=True))
    assert optimizer.global_clipnorm == 1.0 and unclipped.global_clipnorm is None


def test_config_validation_names_the_problem(tmp_path):
    config = load_config("smoke")
    config_lib.validate_config(config, str(tmp_path / "ok"))
    bad = load_config("smoke")
    bad.train.learning_rat = 0.1
    with pytest.raises(
        ValueError, match="unknown field 'train.learning_rat'.*did you mean 'train.learning_rate'"
    ):
        config_lib.validate_config(bad)
    bad = load_config("smoke")
    del bad.eval["mode"]
    with pytest.raises(ValueError, match="missing field 'eval.mode'"):
        config_lib.validate_config(bad)
    bad = load_config("smoke")
    bad.train.global_clipnorm = -1.0
    with pytest.raises(ValueError, match="train.global_clipnorm must be >= 0"):
        config_lib.validate_config(bad)
    bad = load_config("smoke")
    bad.model.name = "deeplabv4"
    bad.data.name = "nosuchdata"
    with pytest.raises(ValueError, match="model.name 'deeplabv4'.*\n.*data.name 'nosuchdata'"):
        config_lib.validate_config(bad)
    bad = load_config("smoke")  # synthetic_shapes: 6 classes
    bad.train.class_weights = (1.0,) * 11
    with pytest.raises(ValueError, match="class_weights has 11 weights but data .* has 6 classes"):
        config_lib.validate_config(bad)
    bad.train.class_weights = (1.0, 1.0, -1.0, 1.0, 1.0, 1.0)
    with pytest.raises(ValueError, match="class_weights must be numbers >= 0"):
        config_lib.validate_config(bad)
    bad.train.class_weights = (0.5, 1.0, 1.5, 1.0, 2.0, 1.0)
    config_lib.validate_config(bad)
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    with pytest.raises(ValueError, match="workdir .* is not writable"):
        config_lib.validate_config(config, str(blocker / "run"))


SHIPPED_CONFIGS = shipped_configs()  # every file, and configs/camvid.py's variants


@pytest.mark.parametrize("name", SHIPPED_CONFIGS)
def test_shipped_configs_have_every_field(name):
    config = load_config(name)
    config_lib.check_fields(config, name)
    assert models.get_model_spec(config.model.name).name == config.model.name


def test_stop_on_nan_names_the_step():
    callback = callbacks_lib.StopOnNaN()
    inputs = keras.Input((1,))
    model = keras.Model(inputs, keras.layers.Dense(1)(inputs))
    model.compile("sgd", "mse")
    callback.set_model(model)
    callback.on_epoch_begin(2)
    with pytest.raises(FloatingPointError, match="loss became nan at epoch 3, batch 5"):
        callback.on_train_batch_end(4, {"loss": float("nan")})


def test_build_callbacks_returns_the_documented_order(tmp_path):
    config = load_config("smoke")
    config.model.backbone = "tiny_test_backbone"
    config.train.bn_recalibration_batches = 1
    config.train.num_overlay_images = 1
    run = trainer.prepare_run(config, str(tmp_path / "run"), strategy="one_device")
    train_ds, _ = trainer.build_data(run)
    model = types.SimpleNamespace(loss_spec={"logits": "softmax"})  # read by the checkpoint
    built = trainer.build_callbacks(run, model, train_ds)
    # The order of `build_callbacks`'s docstring: NaN check before the backup, everything that
    # reads the optimizer step after the restore.
    assert [type(callback).__name__ for callback in built.callbacks] == [
        "StopOnNaN",
        "SafeBackupAndRestore",
        "ReportStartStep",
        "StopAtStep",
        "RecalibrateBatchNorm",
        "AtomicModelCheckpoint",
        "TensorBoardLogger",
        "TrainingCurves",
        "PredictionOverlays",
    ]
    assert built.start_step is built.callbacks[2] and built.recalibrator is built.callbacks[4]
    assert built.recalibrator.num_batches == 1
    assert built.callbacks[5].filepath == os.path.join(run.checkpoint_dir, "best.keras")


def test_where_to_look_names_only_outputs_that_exist(tmp_path):
    (tmp_path / "confusion_matrix.png").write_bytes(b"png")
    assert trainer.where_to_look(str(tmp_path)) == [
        f"  confusion matrix: {tmp_path / 'confusion_matrix.png'}"
    ]
    (tmp_path / "logs").mkdir()
    assert trainer.where_to_look(str(tmp_path))[-1].endswith(
        f"tensorboard --logdir {tmp_path / 'logs'}"
    )


@pytest.mark.slow
def test_train_end_to_end_writes_outputs(tmp_path):
    config = load_config("smoke")
    config.model.backbone = "tiny_test_backbone"
    config.train.verbose = 0
    config.eval.trimap_widths = (2,)
    workdir = str(tmp_path / "run")
    results = trainer.train(config, workdir, strategy="one_device")
    assert results["train_steps"] == 6 and results["num_images"] == 8
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert set(metrics["per_class_iou"]) == set(results["class_names"])
    assert metrics["eval_mode"] == {"mode": "whole"} and "2" in metrics["trimap"]
    assert 0 <= metrics["mean_iou"] <= 1 and metrics["pixel_accuracy"] > 0
    for name in (
        "confusion_matrix.csv",
        "confusion_matrix.png",
        "checkpoints/final.keras",
        "checkpoints/best.keras",
        "config.json",
    ):
        assert (tmp_path / "run" / name).exists(), name
    assert len(os.listdir(tmp_path / "run" / "logs" / "validation_overlays")) == 1
    overlays = tmp_path / "run" / "validation_overlays.png"
    guide = "\n".join(trainer.where_to_look(workdir))
    assert f"validation overlays (image | prediction | label): {overlays}" in guide
    assert f"tensorboard --logdir {os.path.join(workdir, 'logs')}" in guide
    assert not (tmp_path / "run" / "backup").exists()  # removed after a finished run
    reloaded = keras.models.load_model(tmp_path / "run" / "checkpoints" / "final.keras")
    assert reloaded.output_shape == (None, None, None, len(results["class_names"]))
    assert reloaded.dataset["name"] == "synthetic_shapes"
    assert reloaded.dataset["class_names"] == results["class_names"]
