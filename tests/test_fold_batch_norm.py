"""`export.optimize.fold_batch_norm`: same logits without the batch norms that follow convs.

Batch-norm statistics and affine weights are randomised (a fresh model has mean 0, variance 1,
gamma 1, beta 0, where a wrong fold can still look right).
"""

import keras
import numpy as np
import pytest
import tensorflow as tf
from helpers.batch_norm import randomise_batch_norms

from keras_fusionseg import models
from keras_fusionseg.export import export_saved_model
from keras_fusionseg.export.optimize import count_batch_norms, fold_batch_norm, to_bfloat16
from keras_fusionseg.layers.common import (
    AtrousConv2D,
    AtrousDepthwiseConv2D,
    ConvBNReLU,
    SeparableConvBN,
)

SIZE = 64


def outputs(model, x):
    return [np.asarray(t) for t in tf.nest.flatten(model(x, training=False))]


def assert_same_outputs(model, folded, x, tol=1e-4):
    for got, want in zip(outputs(folded, x), outputs(model, x), strict=True):
        np.testing.assert_allclose(got, want, atol=tol, rtol=tol)


@pytest.mark.parametrize("name", models.list_models())
def test_every_registered_model_folds_exactly(name, rng):
    model = models.build(name, num_classes=3, **models.get_model_spec(name).tiny)
    randomise_batch_norms(model, rng)
    folded = fold_batch_norm(model)
    x = rng.uniform(0, 255, (2, SIZE, SIZE, 3)).astype("float32")
    assert_same_outputs(model, folded, x)
    # Only batch norms that follow no conv stay: ContextEncoding's norm over codewords.
    left = [
        layer.path
        for layer in folded._flatten_layers(include_self=False, recursive=True)
        if isinstance(layer, keras.layers.BatchNormalization)
    ]
    assert all(path.endswith("encoding_bn") for path in left), left
    assert count_batch_norms(model) > len(left)
    # Same signature: input, output names and structure.
    assert folded.input.shape == model.input.shape and folded.input.name == model.input.name
    assert folded.output_names == model.output_names
    assert keras.tree.map_structure(lambda t: t.shape, folded.output) == keras.tree.map_structure(
        lambda t: t.shape, model.output
    )
    # The record of how it was built survives (describe_model, export and presets read it).
    assert isinstance(folded, models.SegmentationModel)
    assert folded.build_arguments == model.build_arguments
    assert folded.loss_spec == model.loss_spec and folded.output_stride == model.output_stride


def test_xception_separable_convs_in_the_graph_fold(rng):
    # Xception's ConvBNReLU / SeparableConvBN sit in the functional graph itself.
    model = models.build(
        "deeplabv3plus",
        num_classes=3,
        backbone="xception65",
        backbone_options={"width_multiplier": 0.125, "middle_flow_units": 1},
        input_shape=(SIZE, SIZE, 3),
    )
    randomise_batch_norms(model, rng)
    folded = fold_batch_norm(model)
    assert count_batch_norms(folded) == 0
    x = rng.uniform(0, 255, (1, SIZE, SIZE, 3)).astype("float32")
    assert_same_outputs(model, folded, x)


def conv_then_bn(conv):
    inputs = keras.Input((None, None, 4))
    x = conv(inputs)
    return keras.Model(inputs, keras.layers.BatchNormalization(epsilon=1e-3)(x))


@pytest.mark.parametrize(
    "make",
    [
        lambda: keras.layers.Conv2D(6, 3, padding="same"),
        lambda: keras.layers.Conv2D(6, 3, strides=2, use_bias=False),
        lambda: AtrousConv2D(6, 3, dilation_rate=2, padding="same", use_bias=False),
        lambda: keras.layers.DepthwiseConv2D(3, padding="same"),
        lambda: AtrousDepthwiseConv2D(3, depth_multiplier=2, dilation_rate=3, padding="same"),
        lambda: keras.layers.SeparableConv2D(5, 3, depth_multiplier=2, padding="same"),
        lambda: keras.layers.Conv2D(6, 1, groups=2),
    ],
    ids=[
        "conv",
        "conv_strided",
        "atrous",
        "depthwise",
        "atrous_depthwise_x2",
        "separable",
        "grouped",
    ],
)
def test_each_conv_kind_folds(make, rng):
    model = conv_then_bn(make())
    randomise_batch_norms(model, rng)
    for weight in model.weights:  # random biases as well
        if weight.path.endswith("bias"):
            weight.assign(rng.normal(0.0, 1.0, weight.shape))
    folded = fold_batch_norm(model)
    assert count_batch_norms(folded) == 0
    x = rng.normal(size=(2, 13, 11, 4)).astype("float32")
    assert_same_outputs(model, folded, x, tol=1e-5)


@pytest.mark.parametrize(
    "layer",
    [
        lambda: ConvBNReLU(6, 3, strides=2),
        lambda: ConvBNReLU(6, 3, dilation_rate=2),
        lambda: SeparableConvBN(6, 3, dilation_rate=2),
        lambda: SeparableConvBN(6, 3, strides=2, depth_activation=False, pre_activation=True),
    ],
    ids=["conv_bn_relu_strided", "conv_bn_relu_atrous", "separable_atrous", "separable_strided"],
)
def test_composite_layers_fold(layer, rng):
    inputs = keras.Input((None, None, 4))
    model = keras.Model(inputs, layer()(inputs))
    randomise_batch_norms(model, rng)
    folded = fold_batch_norm(model)
    assert count_batch_norms(folded) == 0
    x = rng.normal(size=(1, 15, 12, 4)).astype("float32")
    assert_same_outputs(model, folded, x, tol=1e-5)


def test_folded_conv_bn_relu_config_rebuilds_the_folded_layer(rng):
    inputs = keras.Input((None, None, 4))
    model = keras.Model(inputs, ConvBNReLU(6, 3, name="unit")(inputs))
    randomise_batch_norms(model, rng)
    unit = fold_batch_norm(model).get_layer("unit")
    config = unit.get_config()
    assert config["use_bias"] and not config["use_bn"]
    rebuilt = ConvBNReLU.from_config(config)
    rebuilt.build((None, None, None, 4))
    rebuilt.set_weights(unit.get_weights())
    x = rng.normal(size=(1, 9, 9, 4)).astype("float32")
    np.testing.assert_allclose(rebuilt(x), unit(x), atol=1e-6)


def test_a_conv_output_read_twice_keeps_its_batch_norm(rng):
    inputs = keras.Input((None, None, 4))
    z = keras.layers.Conv2D(4, 3, padding="same")(inputs)
    y = keras.layers.BatchNormalization()(z)
    model = keras.Model(inputs, keras.layers.Add()([y, z]))
    activated = keras.layers.Conv2D(4, 3, padding="same", activation="relu")(inputs)
    model_activation = keras.Model(inputs, keras.layers.BatchNormalization()(activated))
    x = rng.normal(size=(1, 8, 8, 4)).astype("float32")
    for m in (model, model_activation):
        randomise_batch_norms(m, rng)
        folded = fold_batch_norm(m)
        assert count_batch_norms(folded) == 1
        assert_same_outputs(m, folded, x, tol=1e-5)


def test_the_input_model_is_unchanged(rng):
    name = "deeplabv3plus"
    model = models.build(name, num_classes=3, **models.get_model_spec(name).tiny)
    randomise_batch_norms(model, rng)
    before = [np.array(w) for w in model.weights]
    count = count_batch_norms(model)
    fold_batch_norm(model)
    assert count_batch_norms(model) == count
    for want, got in zip(before, model.weights, strict=True):
        np.testing.assert_array_equal(np.asarray(got), want)


def test_folded_model_exports(tmp_path, rng):
    name = "fastfcn_aspp"  # JPU's separable convs and ASPP inside heads
    model = models.build(name, num_classes=3, **models.get_model_spec(name).tiny)
    randomise_batch_norms(model, rng)
    export_saved_model(fold_batch_norm(model), tmp_path / "sm", signatures=("serving_default",))
    loaded = tf.saved_model.load(str(tmp_path / "sm"))
    image = rng.integers(0, 256, (1, SIZE, SIZE, 3), dtype=np.uint8)
    class_ids = loaded.signatures["serving_default"](images=tf.constant(image))["class_ids"]
    logits = outputs(model, image.astype("float32"))[0]
    top2 = np.sort(logits, axis=-1)[..., -2:]
    decided = top2[..., 1] - top2[..., 0] > 1e-3
    np.testing.assert_array_equal(class_ids.numpy()[decided], logits.argmax(-1)[decided])


def test_folding_a_folded_model_changes_nothing(rng):
    # export_saved_model folds by default, so a model folded by the user is folded again: the
    # folded ConvBNReLU / SeparableConvBN must rebuild from their configs without BNs.
    name = "fastfcn_aspp"  # SeparableConvBN in JPU, ConvBNReLU in ASPP, graph BNs in backbone
    model = models.build(name, num_classes=3, **models.get_model_spec(name).tiny)
    randomise_batch_norms(model, rng)
    once = fold_batch_norm(model)
    twice = fold_batch_norm(once)
    separable = [
        layer
        for layer in twice._flatten_layers(include_self=False, recursive=True)
        if isinstance(layer, SeparableConvBN)
    ]
    assert separable and not any(layer.get_config()["use_bn"] for layer in separable)
    assert count_batch_norms(twice) == count_batch_norms(once) == 0
    assert len(twice.weights) == len(once.weights)
    image = rng.uniform(0, 255, (1, SIZE, SIZE, 3)).astype("float32")
    np.testing.assert_allclose(outputs(twice, image), outputs(once, image), rtol=0, atol=1e-6)
    # Any clone of a folded model (here the bfloat16 rebuild) takes the folded weights too.
    rebuilt = to_bfloat16(once)
    assert len(rebuilt.weights) == len(once.weights)
    np.testing.assert_allclose(outputs(rebuilt, image), outputs(once, image), rtol=0.1, atol=0.1)


def test_refuses_a_subclassed_model():
    class Plain(keras.Model):
        def call(self, x):
            return x

    with pytest.raises(ValueError, match="functional"):
        fold_batch_norm(Plain())


@pytest.mark.slow  # two SavedModel exports
def test_export_folds_by_default_and_keras_predictor_on_request(tmp_path, rng):
    from keras_fusionseg.export import load_segmenter

    name = "deeplabv3plus"
    model = models.build(name, num_classes=3, **models.get_model_spec(name).tiny)
    randomise_batch_norms(model, rng)
    model.save(tmp_path / "model.keras")
    image = rng.integers(0, 256, (SIZE, SIZE, 3), dtype=np.uint8)
    segmenter = load_segmenter(tmp_path / "model.keras", fold_batch_norm=True)
    as_built = load_segmenter(tmp_path / "model.keras")
    assert count_batch_norms(segmenter.model) == 0
    assert count_batch_norms(as_built.model) == 60  # default: as built
    np.testing.assert_array_equal(segmenter.class_ids(image), as_built.class_ids(image))
    sizes = {}
    for fold in (True, False):
        path = tmp_path / f"sm_{fold}"
        options = {} if fold else {"fold_batch_norm": False}  # export's default: folded
        export_saved_model(model, path, signatures=("serving_default",), **options)
        sizes[fold] = len(tf.saved_model.load(str(path)).model_variables)
    # Folded: 2 of each BN's 4 variables gone and one bias per conv added.
    assert sizes[True] < sizes[False]


def test_nested_functional_models_fold(rng):
    # The keras-hub peer of benchmark_models.py: a functional model calling a functional subclass
    # (own constructor) that calls a backbone with dict outputs.
    inputs = keras.Input((None, None, 3))
    x = keras.layers.Conv2D(4, 3, padding="same")(inputs)
    x = keras.layers.ReLU()(keras.layers.BatchNormalization()(x))
    backbone = keras.Model(inputs, {"P2": x}, name="backbone")

    class Segmenter(keras.Model):
        def __init__(self, backbone, **kwargs):
            image = keras.Input((None, None, 3))
            y = keras.layers.Conv2D(2, 1, use_bias=False)(backbone(image)["P2"])
            super().__init__(image, keras.layers.BatchNormalization()(y), **kwargs)

    image = keras.Input((16, 16, 3))
    model = keras.Model(image, Segmenter(backbone)(image))
    randomise_batch_norms(model, rng)
    folded = fold_batch_norm(model)
    assert count_batch_norms(model) == 2 and count_batch_norms(folded) == 0
    assert_same_outputs(model, folded, rng.normal(size=(1, 16, 16, 3)).astype("float32"), tol=1e-5)
