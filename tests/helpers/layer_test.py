"""One harness for every Keras layer of the package: `run_layer_test`.

It checks, for one layer class and one set of constructor arguments:

- config: every constructor argument is a key of `get_config()`; the serialized config
  deserializes (by its registered name) and `from_config` gives a layer with the same config;
  the rebuilt layer, given the original's weights, computes the same outputs;
- keras_file: a functional model wrapping the layer saves to `.keras` and loads back with the
  same outputs;
- unknown_hw: that model, built on inputs of unknown batch, height and width and traced once in
  a `tf.function` with such a signature, runs at two input sizes and matches the layer called
  eagerly; output shapes match `compute_output_shape`;
- weights: the number of trainable and non-trainable weights, when the caller gives them;
- mixed_precision: under a mixed policy the layer runs, keeps float32 variables, returns the
  policy's compute dtype (or float32 where the layer documents float32 outputs) and stays close
  to the float32 outputs.

A check can be skipped for one layer with `opt_outs={"<check>": "<reason>"}`; the reason is
required, so the table of opt-outs says why.

`config_clone` and `keras_file_roundtrip` are the two round trips on their own, for tests that
make their own assertions on the result.
"""

import json

import keras
import numpy as np
import tensorflow as tf

CHECKS = ("config", "keras_file", "unknown_hw", "mixed_precision")


def is_shape(value):
    """Whether `value` is one shape (a list or tuple of ints and Nones), not a list of shapes."""
    return isinstance(value, list | tuple) and all(
        d is None or isinstance(d, int | np.integer) for d in value
    )


def flat_shapes(structure):
    """The shapes of a nested structure of shapes, in order."""
    if is_shape(structure):
        return [tuple(structure)]
    return [shape for item in structure for shape in flat_shapes(item)]


def random_inputs(input_shapes, rng):
    """Float32 normal inputs: one array for one shape, a list for a list of shapes."""
    if is_shape(input_shapes):
        return rng.normal(size=input_shapes).astype("float32")
    return [rng.normal(size=shape).astype("float32") for shape in input_shapes]


def config_clone(layer, inputs):
    """A copy of built `layer` made from its serialized config (looked up by registered name),
    built on `inputs` if deserialization did not build it, holding `layer`'s weights."""
    clone = keras.saving.deserialize_keras_object(keras.saving.serialize_keras_object(layer))
    if not clone.built:
        clone(inputs)
    clone.set_weights(layer.get_weights())
    return clone


def keras_file_roundtrip(model, inputs, tmp_path, atol=1e-6):
    """Saves `model` to `tmp_path`/layer.keras, loads it and asserts equal outputs on `inputs`;
    returns the loaded model."""
    expected = model(inputs)
    path = tmp_path / "layer.keras"
    model.save(path)
    clone = keras.models.load_model(path)
    assert_all_close(expected, clone(inputs), atol=atol, what=f"{path.name} round trip")
    return clone


def assert_all_close(expected, actual, atol, what, rtol=0.0):
    expected, actual = tf.nest.flatten(expected), tf.nest.flatten(actual)
    assert len(expected) == len(actual), f"{what}: {len(actual)} outputs, expected {len(expected)}"
    for i, (a, b) in enumerate(zip(expected, actual, strict=True)):
        np.testing.assert_allclose(
            np.asarray(b, dtype="float32"),
            np.asarray(a, dtype="float32"),
            atol=atol,
            rtol=rtol,
            err_msg=f"{what}: output {i} differs",
        )


def _perturb_weights(layer, rng):
    """Adds [0, 0.1) to every weight, so zero biases and unit BN statistics take part in the
    comparisons (positive noise keeps variances and temperatures positive)."""
    for weight in layer.weights:
        value = np.asarray(weight.numpy(), dtype="float32")
        weight.assign(value + rng.uniform(0.0, 0.1, size=value.shape).astype("float32"))


def _other_shapes(input_shapes):
    """Second input size for the unknown-size check: batch 1, height x 3/2, width x 5/4 (so
    that a pyramid of sizes stays a pyramid and height and width differ)."""

    def resize(shape):
        h, w = shape[1], shape[2]
        return (1, max(1, h * 3 // 2), max(1, w * 5 // 4), *shape[3:])

    if is_shape(input_shapes):
        return resize(input_shapes)
    return [resize(shape) for shape in input_shapes]


def _symbolic_inputs(input_shapes):
    """keras.Input(s) with unknown batch and spatial dims, known channels."""

    def make(shape):
        return keras.Input((None,) * (len(shape) - 2) + (shape[-1],))

    if is_shape(input_shapes):
        return make(input_shapes)
    return [make(shape) for shape in input_shapes]


def _check_output_shapes(layer, input_shapes, outputs, what):
    expected = flat_shapes(layer.compute_output_shape(input_shapes))
    actual = [tuple(y.shape) for y in tf.nest.flatten(outputs)]
    assert actual == expected, (
        f"{what}: {type(layer).__name__} outputs have shapes {actual}, but "
        f"compute_output_shape({input_shapes}) says {expected}"
    )


def _check_weight_counts(layer, trainable, non_trainable):
    counts = (len(layer.trainable_weights), len(layer.non_trainable_weights))
    wanted = (
        counts[0] if trainable is None else trainable,
        counts[1] if non_trainable is None else non_trainable,
    )
    assert counts == wanted, (
        f"{type(layer).__name__} has {counts[0]} trainable and {counts[1]} non-trainable "
        f"weights, expected {wanted[0]} and {wanted[1]}: "
        f"{[w.path for w in layer.weights]}"
    )


def _check_config(layer_cls, layer, init_kwargs, inputs, outputs, atol):
    config = layer.get_config()
    missing = sorted(set(init_kwargs) - set(config))
    assert not missing, (
        f"{layer_cls.__name__}.get_config() lacks the constructor argument(s) {missing}"
    )
    serialized = keras.saving.serialize_keras_object(layer)
    json.dumps(serialized)  # what a .keras file stores
    assert keras.saving.get_registered_object(serialized["registered_name"]) is layer_cls, (
        f"{layer_cls.__name__} is not registered as {serialized['registered_name']!r}"
    )
    rebuilt = layer_cls.from_config(config)
    assert rebuilt.get_config() == config, (
        f"{layer_cls.__name__}.from_config(config).get_config() != config:\n"
        f"{rebuilt.get_config()}\n!=\n{config}"
    )
    clone = config_clone(layer, inputs)
    assert type(clone) is layer_cls
    assert clone.get_config() == config
    assert_all_close(outputs, clone(inputs), atol=atol, what="config round trip")


def _check_unknown_hw(layer, model, input_shapes, other_shapes, rng, atol):
    specs = [tf.TensorSpec(t.shape, t.dtype) for t in model.inputs]
    signature = specs[0] if is_shape(input_shapes) else specs
    # One trace with unknown batch, height and width, run at two sizes.
    traced = tf.function(lambda x: model(x), input_signature=[signature])
    symbolic = [tuple(t.shape) for t in model.outputs]
    for shapes in (input_shapes, other_shapes):
        x = random_inputs(shapes, rng)
        expected = layer(x)
        _check_output_shapes(layer, shapes, expected, "eager call")
        actual = traced(x)
        assert_all_close(expected, actual, atol=atol, what=f"unknown-size graph at {shapes}")
        for static, y in zip(symbolic, tf.nest.flatten(actual), strict=True):
            assert len(static) == len(y.shape) and all(
                s is None or s == d for s, d in zip(static, y.shape, strict=True)
            ), f"symbolic output shape {static} does not fit the output {tuple(y.shape)}"


def _check_mixed_precision(layer_cls, init_kwargs, layer, inputs, outputs, policy, float32_outputs):
    previous = keras.config.dtype_policy()
    keras.config.set_dtype_policy(policy)
    try:
        low = layer_cls(**init_kwargs)
        low(inputs)
        low.set_weights(layer.get_weights())
        low_outputs = low(inputs)
        compute_dtype = low.compute_dtype
    finally:
        keras.config.set_dtype_policy(previous)
    variable_dtypes = {
        w.path: w.dtype
        for w in low.weights
        if keras.backend.standardize_dtype(w.dtype) != "float32"
    }
    assert not variable_dtypes, f"{policy}: variables not float32: {variable_dtypes}"
    wanted = "float32" if float32_outputs else compute_dtype
    dtypes = [keras.backend.standardize_dtype(y.dtype) for y in tf.nest.flatten(low_outputs)]
    assert dtypes == [wanted] * len(dtypes), (
        f"{policy}: {layer_cls.__name__} outputs are {dtypes}, expected {wanted}"
    )
    for y, y_low in zip(tf.nest.flatten(outputs), tf.nest.flatten(low_outputs), strict=True):
        y, y_low = np.asarray(y, "float32"), np.asarray(y_low, "float32")
        assert np.all(np.isfinite(y_low)), f"{policy}: non-finite outputs"
        # bfloat16 keeps 8 significant bits: a few percent of the output's scale.
        np.testing.assert_allclose(y_low, y, atol=0.05 * (np.abs(y).max() + 1e-3))


def run_layer_test(
    layer_cls,
    init_kwargs,
    input_shapes,
    *,
    tmp_path,
    other_input_shapes=None,
    expected_trainable_weights=None,
    expected_non_trainable_weights=None,
    mixed_precision_policy="mixed_bfloat16",
    float32_outputs=False,
    opt_outs=None,
    atol=1e-5,
    seed=0,
):
    """Runs the checks of the module doc on `layer_cls(**init_kwargs)`; returns the layer.

    Args:
        layer_cls: the layer class (registered for serialization).
        init_kwargs: dict, constructor arguments (prefer non-default values: an argument left
            at its default would not notice a `get_config` that forgets it).
        input_shapes: one shape `(batch, h, w, c)` or a list of shapes for a list input.
        tmp_path: directory for the `.keras` file.
        other_input_shapes: the second size of the unknown-size check (default: batch 1,
            height x 3/2, width x 5/4).
        expected_trainable_weights, expected_non_trainable_weights: int or None (not checked).
        mixed_precision_policy: "mixed_bfloat16" or "mixed_float16".
        float32_outputs: bool, the layer documents float32 outputs under a mixed policy.
        opt_outs: dict `{check: reason}` with checks from `CHECKS`, each reason non-empty.
        atol: tolerance of the float32 comparisons.
        seed: seed of the random inputs and weight perturbation.
    """
    opt_outs = dict(opt_outs or {})
    unknown = sorted(set(opt_outs) - set(CHECKS))
    assert not unknown, f"unknown check(s) {unknown} in opt_outs; checks are {CHECKS}"
    assert all(isinstance(r, str) and r.strip() for r in opt_outs.values()), (
        f"every opt-out needs a reason, received {opt_outs}"
    )
    rng = np.random.default_rng(seed)
    inputs = random_inputs(input_shapes, rng)

    layer = layer_cls(**init_kwargs)
    layer(inputs)
    _perturb_weights(layer, rng)
    outputs = layer(inputs)
    _check_output_shapes(layer, input_shapes, outputs, "eager call")
    _check_weight_counts(layer, expected_trainable_weights, expected_non_trainable_weights)

    if "config" not in opt_outs:
        _check_config(layer_cls, layer, init_kwargs, inputs, outputs, atol)

    if "keras_file" not in opt_outs or "unknown_hw" not in opt_outs:
        wrapped = layer_cls(**init_kwargs)
        symbolic = _symbolic_inputs(input_shapes)
        model_outputs = tf.nest.flatten(wrapped(symbolic))
        model = keras.Model(
            symbolic, model_outputs[0] if len(model_outputs) == 1 else model_outputs
        )
        wrapped.set_weights(layer.get_weights())
        if "unknown_hw" not in opt_outs:
            other = other_input_shapes or _other_shapes(input_shapes)
            _check_unknown_hw(wrapped, model, input_shapes, other, rng, atol)
        if "keras_file" not in opt_outs:
            keras_file_roundtrip(model, inputs, tmp_path, atol=atol)

    if "mixed_precision" not in opt_outs:
        _check_mixed_precision(
            layer_cls, init_kwargs, layer, inputs, outputs, mixed_precision_policy, float32_outputs
        )
    return layer
