import subprocess
import sys

import keras
import numpy as np
import pytest

from keras_fusionseg.training import batch_norm
from keras_fusionseg.training.batch_norm import RecalibrateBatchNorm, recalibrate_batch_norm


def bn_model():
    inputs = keras.Input((4, 4, 3))
    x = keras.layers.BatchNormalization(momentum=0.9997)(inputs)
    return keras.Model(inputs, keras.layers.BatchNormalization()(x))


def test_recalibration_sets_exact_averages_of_batch_statistics(rng):
    model = bn_model()
    batches = [
        rng.normal(loc=i, scale=1 + i, size=(5, 4, 4, 3)).astype("float32") for i in range(3)
    ]
    used = recalibrate_batch_norm(model, iter(batches + batches), num_batches=3)
    assert used == 3
    first = model.layers[1]
    means = np.mean([b.mean(axis=(0, 1, 2)) for b in batches], axis=0)
    variances = np.mean([b.var(axis=(0, 1, 2)) for b in batches], axis=0)
    np.testing.assert_allclose(first.moving_mean, means, rtol=1e-5)
    np.testing.assert_allclose(first.moving_variance, variances, rtol=1e-4)
    assert first.momentum == 0.9997  # restored
    # the second layer saw normalised inputs: its averaged variance is close to 1
    np.testing.assert_allclose(model.layers[2].moving_variance, 1.0, atol=0.05)


def test_recalibration_accepts_image_label_pairs_and_checks_count(rng):
    model = bn_model()
    x = rng.normal(size=(2, 4, 4, 3)).astype("float32")
    assert recalibrate_batch_norm(model, [(x, None)], num_batches=5) == 1
    with pytest.raises(ValueError, match="num_batches"):
        recalibrate_batch_norm(model, [x], num_batches=0)


def test_callback_recalibrates_before_validation(rng):
    model = bn_model()
    model.compile(loss="mse")
    x = (rng.normal(size=(8, 4, 4, 3)) * 3 + 2).astype("float32")
    callback = RecalibrateBatchNorm([x[:4], x[4:]], num_batches=2)
    model.evaluate(x, x, verbose=0, callbacks=[callback])
    np.testing.assert_allclose(
        model.layers[1].moving_mean,
        np.mean([x[:4].mean(axis=(0, 1, 2)), x[4:].mean(axis=(0, 1, 2))], axis=0),
        rtol=1e-5,
    )


def test_callback_traces_the_forward_pass_once(rng, monkeypatch):
    traced, original = [], batch_norm.training_forward

    def counting_forward(model):
        traced.append(original(model))
        return traced[-1]

    monkeypatch.setattr(batch_norm, "training_forward", counting_forward)
    model = bn_model()
    model.compile(loss="mse")
    x = rng.normal(size=(8, 4, 4, 3)).astype("float32")
    callback = RecalibrateBatchNorm([x[:4], x[4:]], num_batches=2)
    for _ in range(3):
        model.evaluate(x, x, verbose=0, callbacks=[callback])
    assert len(traced) == 1
    assert traced[0].experimental_get_tracing_count() == 1
    other = bn_model()  # the same callback on another model recalibrates that model
    other.compile(loss="mse")
    other.evaluate(x, x, verbose=0, callbacks=[callback])
    assert len(traced) == 2
    np.testing.assert_allclose(
        other.layers[1].moving_mean,
        np.mean([x[:4].mean(axis=(0, 1, 2)), x[4:].mean(axis=(0, 1, 2))], axis=0),
        rtol=1e-5,
    )


def test_recalibration_leaves_frozen_layers_and_weights_alone(rng):
    model = bn_model()
    frozen = model.layers[2]
    frozen.trainable = False
    before = [keras.ops.convert_to_numpy(v) for v in model.weights]
    batches = [rng.normal(loc=3, size=(4, 4, 4, 3)).astype("float32") for _ in range(2)]
    recalibrate_batch_norm(model, batches, num_batches=2)
    after = [keras.ops.convert_to_numpy(v) for v in model.weights]
    changed = [
        v.path
        for v, b, a in zip(model.weights, before, after, strict=True)
        if not np.array_equal(b, a)
    ]
    assert sorted(changed) == sorted(
        v.path for v in (model.layers[1].moving_mean, model.layers[1].moving_variance)
    )


@pytest.mark.slow
def test_training_checkpoints_load_after_importing_the_package(tmp_path):
    # The side effect under test is an import's: this process has imported everything
    # already, so the checkpoint is loaded in a fresh interpreter that imports only the
    # top-level package.
    from keras_fusionseg.training.optimizers import PolyDecay, build_optimizer

    model = bn_model()
    model.compile(optimizer=build_optimizer("sgd", PolyDecay(0.1, 10), model=model), loss="mse")
    model.fit(np.ones((2, 4, 4, 3), "float32"), np.ones((2, 4, 4, 3), "float32"), verbose=0)
    path = tmp_path / "checkpoint.keras"
    model.save(path)
    script = (
        "import sys, keras, keras_fusionseg\n"
        "loaded = keras.models.load_model(sys.argv[1])\n"
        "print(type(loaded.optimizer).__module__, type(loaded.optimizer).__name__)\n"
        "print(type(loaded.optimizer._learning_rate).__name__)\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", script, str(path)], capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0, result.stderr[-3000:]
    lines = result.stdout.split("\n")
    module_and_name = f"{type(model.optimizer).__module__} {type(model.optimizer).__name__}"
    assert module_and_name in lines
    assert "PolyDecay" in lines  # the schedule came back as itself, not as a float
