"""Every layer that `keras_fusionseg.layers` registers for serialization goes through the shared
harness (`helpers.layer_test.run_layer_test`): config and `.keras` round trips, unknown input
size, weight counts, mixed precision.

A new layer is tested by registering it and adding its row to `ROWS`; a registered layer without
a row fails `test_registered_layer`, a row whose layer is no longer registered fails
`test_every_row_names_a_registered_layer`. Rows use tiny widths, 16-px inputs and non-default
arguments where there are any (an argument left at its default would not notice a `get_config`
that forgets it).
"""

import importlib
import pkgutil

import keras
import pytest
from helpers.layer_test import run_layer_test

import keras_fusionseg.layers
from keras_fusionseg.layers.common import PACKAGE


def registered_layers():
    """{class name: class} of the Layer classes registered under PACKAGE by the modules of
    `keras_fusionseg.layers` (every module imported first, so none is missed)."""
    for module in pkgutil.walk_packages(
        keras_fusionseg.layers.__path__, keras_fusionseg.layers.__name__ + "."
    ):
        importlib.import_module(module.name)
    found = {}
    for key, obj in keras.saving.get_custom_objects().items():
        if (
            key.startswith(PACKAGE + ">")
            and isinstance(obj, type)
            and issubclass(obj, keras.layers.Layer)
            and not issubclass(obj, keras.Model)
            and obj.__module__.startswith(keras_fusionseg.layers.__name__ + ".")
        ):
            found[obj.__name__] = obj
    return found


REGISTERED_LAYERS = registered_layers()


def row(kwargs, inputs, weights, **options):
    """One layer's case: constructor kwargs, input shape(s), (trainable, non-trainable) weight
    counts, and further `run_layer_test` options (opt-outs with reasons)."""
    return dict(
        init_kwargs=kwargs,
        input_shapes=inputs,
        expected_trainable_weights=weights[0],
        expected_non_trainable_weights=weights[1],
        **options,
    )


PYRAMID = [(2, 16, 16, 4), (2, 8, 8, 6), (2, 4, 4, 8)]  # finest first

# Weight counts: conv kernel (+ bias); BN gamma, beta (trainable) and moving mean, variance.
ROWS = {
    # atrous.py
    "AtrousConv2D": row(
        dict(filters=4, kernel_size=3, dilation_rate=2, padding="same", use_bias=True),
        (2, 16, 16, 3),
        (2, 0),
    ),
    "AtrousDepthwiseConv2D": row(
        dict(kernel_size=3, dilation_rate=2, padding="same", depth_multiplier=2),
        (2, 16, 16, 3),
        (2, 0),
    ),
    # common.py
    "ResizeToReference": row(dict(interpolation="nearest"), [(2, 4, 5, 3), (2, 16, 15, 1)], (0, 0)),
    "ConvBNReLU": row(
        dict(
            filters=4,
            kernel_size=3,
            strides=2,
            use_bias=True,
            activation="relu6",
            kernel_regularizer="l2",
            bn_momentum=0.9,
            bn_epsilon=1e-5,
        ),
        (2, 17, 16, 3),
        (4, 2),
    ),
    "SeparableConvBN": row(
        dict(
            filters=6,
            kernel_size=3,
            dilation_rate=2,
            depth_activation=False,
            pre_activation=True,
            kernel_regularizer="l2",
            bn_momentum=0.9,
            bn_epsilon=1e-5,
        ),
        (2, 16, 16, 4),
        (6, 4),
    ),
    "ImageNormalization": row(dict(mode="torch"), (2, 16, 16, 3), (0, 0)),
    # deeplabv3plus.py: branches image pooling, 1x1 and one separable conv per rate, projection
    "ASPP": row(
        dict(
            filters=4,
            atrous_rates=(1, 2, 3),
            separable=True,
            dropout=0.2,
            image_pooling=True,
            kernel_regularizer="l2",
            bn_epsilon=1e-4,
        ),
        (2, 16, 16, 6),
        (3 + 3 + 3 * 6 + 3, 2 + 2 + 3 * 4 + 2),
    ),
    "DeepLabV3PlusDecoder": row(
        dict(
            num_classes=3,
            filters=4,
            low_level_filters=2,
            separable=True,
            kernel_regularizer="l2",
            bn_epsilon=1e-4,
        ),
        [(2, 4, 4, 6), (2, 16, 16, 5)],
        (3 + 2 * 6 + 2, 2 + 2 * 4),
    ),
    # dupsampling.py
    "DUpsampling": row(
        dict(ratio=4, num_classes=3, code_channels=5, trainable_reconstruction=False),
        [(2, 4, 4, 5), (2, 14, 13, 1)],
        (0, 2),
    ),
    "AdaptiveTemperatureSoftmax": row(
        dict(initial_temperature=2.0, min_temperature=0.01, apply_softmax=True),
        (2, 8, 8, 4),
        (1, 0),
    ),
    # exfuse.py
    "GlobalConvolution": row(dict(filters=3, kernel_size=5, use_bias=True), (2, 16, 16, 4), (8, 0)),
    "BoundaryRefinement": row(dict(use_bias=False), (2, 16, 16, 3), (2, 0)),
    "SemanticEmbeddingBranch": row(dict(use_bias=True), PYRAMID, (4, 0)),
    "ExplicitChannelResolutionEmbedding": row(
        dict(filters=3, kernel_size=5, use_bias=True), [(2, 8, 8, 6), (2, 15, 15, 1)], (2, 0)
    ),
    "DenselyAdjacentPrediction": row(dict(kernel_size=5), (2, 8, 8, 50), (0, 0)),
    "UpsampleBilinear": row(dict(factor=3), (2, 5, 4, 3), (0, 0)),
    "DeconvolutionUpsample": row(
        dict(filters=3, bilinear_init=True), [(2, 8, 8, 3), (2, 15, 15, 1)], (1, 0)
    ),
    # fastfcn.py
    "JointPyramidUpsampling": row(
        dict(width=4, dilation_rates=(1, 2), bn_momentum=0.8, bn_epsilon=1e-4),
        PYRAMID,
        (3 * 3 + 2 * 6, 3 * 2 + 2 * 4),
    ),
    # projection conv-BN, codewords, smoothing factors, encoding BN, attention, presence
    "ContextEncoding": row(
        dict(num_codes=4, num_classes=3, bn_momentum=0.8, bn_epsilon=1e-4),
        (2, 8, 8, 6),
        (3 + 2 + 2 + 2 + 2, 2 + 2),
    ),
    # gff.py
    "PyramidPooling": row(
        dict(bins=(1, 2, 4), reduction_filters=2, bn_momentum=0.8, bn_epsilon=1e-4),
        (2, 16, 16, 6),
        (3 * 3, 3 * 2),
    ),
    "GatedFullyFusion": row(
        dict(per_channel_gates=True, sequential=True, use_bias=True),
        [(2, 16, 16, 4), (2, 8, 8, 4), (2, 4, 4, 4)],
        (6, 0),
    ),
    "DenseFeaturePyramid": row(
        dict(filters=3, kernel_size=3, bn_momentum=0.8, bn_epsilon=1e-4),
        [(2, 4, 4, 6), (2, 8, 8, 4), (2, 16, 16, 4)],  # context first, then top-down
        (3 * 3, 3 * 2),
    ),
}


@pytest.mark.parametrize("name", sorted(REGISTERED_LAYERS))
def test_registered_layer(name, tmp_path):
    if name not in ROWS:
        pytest.fail(
            f"{name} is registered for serialization but has no row in ROWS of {__file__}: "
            "add its constructor kwargs, input shapes and weight counts there"
        )
    run_layer_test(REGISTERED_LAYERS[name], **ROWS[name], tmp_path=tmp_path)


def test_every_row_names_a_registered_layer():
    stale = sorted(set(ROWS) - set(REGISTERED_LAYERS))
    assert not stale, f"rows for layers not registered under {PACKAGE!r}: {stale}"
    # The layers the package exports are among those found.
    exported = {
        name
        for name, obj in vars(keras_fusionseg.layers).items()
        if isinstance(obj, type) and issubclass(obj, keras.layers.Layer)
    }
    assert exported and exported <= set(REGISTERED_LAYERS)
