"""Training that does something: the loss falls, every loss term counts, precise BN and AdamW act.

`test_training.py` checks `train()` writes its outputs; these tests check what training does:
on a fixed batch the library's loss and optimizer lower the loss; in `train()` the total loss
is the weighted sum of the aux and SE terms; precise BN changes the saved statistics; AdamW
decays kernels only.
"""

import keras
import numpy as np
import pytest
import tensorflow as tf
import training_tiny_backbone  # noqa: F401  (registers "tiny_test_backbone")
from config_files import load_config

from keras_fusionseg import models
from keras_fusionseg.training import losses, optimizers, trainer


def smoke_config():
    config = load_config("smoke")
    config.model.backbone = "tiny_test_backbone"
    config.train.verbose = 0
    config.train.num_overlay_images = 0
    return config


def tiny_deeplab(num_classes, aux_outputs=False):
    return models.build(
        "deeplabv3plus",
        num_classes=num_classes,
        backbone="tiny_test_backbone",
        aux_outputs=aux_outputs,
        aspp_filters=8,
        decoder_filters=8,
        low_level_filters=4,
    )


@pytest.fixture
def dtype_policy():
    previous = keras.config.dtype_policy()
    yield keras.config.set_dtype_policy
    keras.config.set_dtype_policy(previous)


@pytest.mark.parametrize("policy", ["float32", "mixed_bfloat16"])
def test_training_lowers_the_loss_on_a_fixed_batch(policy, dtype_policy, rng):
    # Labels that depend on the image (bright left half vs dark right half, plus noise).
    images = rng.uniform(0, 60, size=(4, 32, 32, 3)).astype("float32")
    images[:, :, :16] += 180
    labels = np.zeros((4, 32, 32, 1), "uint8")
    labels[:, :, 16:] = 1
    labels[:, :2] = 255  # ignored rows
    dtype_policy(policy)
    model = tiny_deeplab(2)
    assert model.output.dtype == "float32"  # logits stay float32 under mixed precision
    loss, _ = losses.losses_from_loss_spec(model.loss_spec, num_classes=2)
    schedule = optimizers.PolyDecay(0.05, 40)
    optimizer = optimizers.build_optimizer("sgd", schedule, model=model, weight_decay=1e-4)
    model.compile(optimizer=optimizer, loss=loss)
    # Training-mode losses (batch statistics): inference would also depend on how far the
    # slow (0.9997) BN moving averages have moved in 30 steps.
    history = model.fit(images, labels, batch_size=4, epochs=30, verbose=0).history["loss"]
    first, last = history[0], min(history[-3:])
    assert np.isfinite(history).all() and last < 0.5 * first, history


@pytest.mark.slow
def test_train_weighs_aux_and_se_losses(tmp_path):
    # EncNet: logits + aux FCN head (0.2) + SE presence loss (0.2) through train().
    config = smoke_config()
    config.model.name = "encnet"
    config.model.backbone_options = {}
    config.model.aux_outputs = True
    config.model.options = {"head_width": 8, "aux_width": 8, "num_codes": 4}
    config.train.epochs = 1
    config.train.steps_per_epoch = 2
    results = trainer.train(config, str(tmp_path / "run"), strategy="one_device")
    spec = models.build(
        "encnet",
        num_classes=len(results["class_names"]),
        backbone="tiny_test_backbone",
        aux_outputs=True,
        **config.model.options,
    ).loss_spec
    assert set(spec) == {"logits", "aux", "se"}
    history = results["history"]
    total = sum(weight * history[f"{key}_loss"][-1] for key, (_, weight) in spec.items())
    assert history["aux_loss"][-1] > 0 and history["se_loss"][-1] > 0
    assert history["loss"][-1] == pytest.approx(total, rel=1e-3)
    assert (tmp_path / "run" / "checkpoints" / "final.keras").exists()
    assert 0 <= results["mean_iou"] <= 1


def first_batch_norm(model):
    for layer in model._flatten_layers(include_self=False, recursive=True):
        if isinstance(layer, keras.layers.BatchNormalization):
            return layer
    raise AssertionError("no BatchNormalization layer")


@pytest.mark.slow
def test_train_with_precise_bn_adamw_class_weights_and_ohem(tmp_path):
    # BN momentum ~1 keeps training from moving the statistics (initial mean 0, variance 1);
    # no validation runs during fit, so only the final re-estimation can change them.
    config = smoke_config()
    config.train.epochs = 1
    config.train.steps_per_epoch = 2
    config.train.validation_every_epochs = 5
    config.train.bn_momentum = 0.99999
    config.train.bn_recalibration_batches = 2
    config.train.optimizer = "adamw"
    config.train.learning_rate = 1e-3
    config.train.weight_decay = 1e-2
    config.train.class_weights = (0.5, 1.0, 1.5, 2.0, 2.5, 3.0)  # six synthetic_shapes classes
    config.train.ohem_fraction = 0.5
    trainer.train(config, str(tmp_path / "run"), strategy="one_device")
    model = keras.models.load_model(tmp_path / "run" / "checkpoints" / "final.keras")
    assert isinstance(model.optimizer, keras.optimizers.AdamW)
    # Class weights and OHEM reached the compiled loss (saved with the checkpoint).
    loss_config = model.loss.get_config()
    assert list(loss_config["class_weights"]) == [0.5, 1.0, 1.5, 2.0, 2.5, 3.0]
    assert loss_config["ohem_fraction"] == 0.5
    bn = first_batch_norm(model)
    assert np.abs(bn.moving_mean.numpy()).max() > 1e-2
    assert np.abs(bn.moving_variance.numpy() - 1.0).max() > 1e-2


@pytest.mark.parametrize("decay_depthwise", [False, True])
@pytest.mark.parametrize("name", ["sgd", "adamw"])
def test_weight_decay_reaches_kernels_only(name, decay_depthwise):
    # Zero gradients from zero velocity: what moves is the decay alone, w <- w (1 - lr * decay),
    # both for AdamW's decoupled decay (Loshchilov & Hutter, ICLR 2019, Alg. 2 line 12; Adam's
    # own step is 0) and for SGD's L2 gradient decay * w on its first momentum step. Keras 3
    # names a DepthwiseConv2D kernel "kernel", like a conv kernel: a name rule cannot tell them.
    inputs = keras.Input((6, 6, 3))
    x = keras.layers.Conv2D(4, 3, name="conv")(inputs)
    x = keras.layers.BatchNormalization(name="bn")(x)
    x = keras.layers.DepthwiseConv2D(3, name="depthwise")(x)
    model = keras.Model(inputs, x)
    for variable in model.trainable_variables:
        variable.assign(np.full(variable.shape, 0.5, "float32"))
    optimizer = optimizers.build_optimizer(
        name, 0.1, model=model, weight_decay=0.5, decay_depthwise=decay_depthwise
    )
    variables = model.trainable_variables
    optimizer.apply([tf.zeros_like(v) for v in variables], variables)
    decayed = {"conv/kernel"} | ({"depthwise/kernel"} if decay_depthwise else set())
    for variable in variables:
        expected = 0.5 * (1 - 0.1 * 0.5) if variable.path in decayed else 0.5
        np.testing.assert_allclose(variable.numpy(), expected, rtol=1e-6, err_msg=variable.path)


def test_poly_decay_ends_at_end_learning_rate():
    # lr(t) = (base - end) (1 - t / T)^power + end, held at `end` after T steps.
    schedule = optimizers.PolyDecay(0.1, 50, power=0.9, end_learning_rate=0.01)
    for step in (0, 10, 25, 49, 50, 80):
        expected = (0.1 - 0.01) * (1 - min(step, 50) / 50) ** 0.9 + 0.01
        assert float(schedule(step)) == pytest.approx(expected, rel=1e-5, abs=1e-8), step
    assert float(schedule(80)) == pytest.approx(0.01)


def test_configure_batch_norm_reaches_nested_layers():
    # Sync BN and the momentum override must reach the BN inside composite layers
    # (ConvBNReLU / SeparableConvBN) and inside a nested backbone model.
    model = tiny_deeplab(2)
    found = [
        layer
        for layer in model._flatten_layers(include_self=False, recursive=True)
        if isinstance(layer, keras.layers.BatchNormalization)
    ]
    nested = [bn for bn in found if bn.name in ("bn", "depthwise_bn", "pointwise_bn")]
    assert nested, "the tiny model has BN inside composite layers"
    assert trainer.configure_batch_norm(model, synchronized=True, momentum=0.9) == len(found)
    for bn in found:
        assert bn.synchronized and bn.momentum == 0.9, bn.path
