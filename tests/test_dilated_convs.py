"""Dilated convolutions: equal to stock Keras and to NumPy, forward and gradients, on any CPU.

CI runs this file with oneDNN off (the kernels of ARM, macOS and AVX2-only x86) and on.
"""

import keras
import numpy as np
import pytest
import tensorflow as tf

from keras_fusionseg.layers import AtrousConv2D, AtrousDepthwiseConv2D, ConvBNReLU
from keras_fusionseg.layers.atrous import native_dilated_convs

# kernel_size, rate, padding, input (N, H, W, C): odd sizes, kernels wider than the map,
# an even kernel (asymmetric "same" padding), non-square kernels.
CASES = [
    (3, 2, "same", (2, 13, 9, 4)),
    (3, 6, "same", (1, 7, 11, 3)),
    (5, 3, "same", (2, 10, 15, 2)),
    (2, 3, "same", (1, 9, 8, 3)),
    ((1, 3), 2, "same", (2, 6, 7, 2)),
    (3, 2, "valid", (2, 11, 12, 3)),
]


def numpy_dilated_conv(x, kernel, rate, padding, depthwise):
    """Direct sum of DeepLabv3+ eq. 1 (correlation; TF 'same' puts the odd pixel after)."""
    kh, kw = kernel.shape[:2]
    span_h, span_w = rate * (kh - 1), rate * (kw - 1)
    if padding == "same":
        x = np.pad(
            x,
            [
                (0, 0),
                (span_h // 2, span_h - span_h // 2),
                (span_w // 2, span_w - span_w // 2),
                (0, 0),
            ],
        )
    out_h, out_w = x.shape[1] - span_h, x.shape[2] - span_w
    if depthwise:
        channels, multiplier = kernel.shape[2:]
        y = np.zeros((x.shape[0], out_h, out_w, channels * multiplier))
    else:
        y = np.zeros((x.shape[0], out_h, out_w, kernel.shape[3]))
    for i in range(kh):
        for j in range(kw):
            tap = x[:, i * rate : i * rate + out_h, j * rate : j * rate + out_w]
            if depthwise:
                y += (tap[..., :, None] * kernel[i, j]).reshape(y.shape)
            else:
                y += tap @ kernel[i, j]
    return y


def make_pair(depthwise, kernel_size, rate, padding, channels, multiplier=1):
    kwargs = dict(kernel_size=kernel_size, dilation_rate=rate, padding=padding, use_bias=True)
    if depthwise:
        ours = AtrousDepthwiseConv2D(depth_multiplier=multiplier, **kwargs)
        stock = keras.layers.DepthwiseConv2D(depth_multiplier=multiplier, **kwargs)
    else:
        ours, stock = AtrousConv2D(5, **kwargs), keras.layers.Conv2D(5, **kwargs)
    shape = (None, None, None, channels)
    ours.build(shape)
    stock.build(shape)
    rng = np.random.default_rng(1)
    weights = [rng.normal(size=w.shape).astype("float32") for w in ours.get_weights()]
    ours.set_weights(weights)
    stock.set_weights(weights)
    return ours, stock


def output_and_gradients(layer, x, upstream):
    x = tf.constant(x)
    with tf.GradientTape() as tape:
        tape.watch(x)
        y = layer(x)
        loss = tf.reduce_sum(y * upstream)
    grads = tape.gradient(loss, [x, *layer.trainable_weights])
    return [np.asarray(y)] + [np.asarray(g) for g in grads]


@pytest.mark.parametrize("depthwise,multiplier", [(False, 1), (True, 1), (True, 2)])
@pytest.mark.parametrize("kernel_size,rate,padding,shape", CASES)
def test_matches_stock_keras_and_numpy(depthwise, multiplier, kernel_size, rate, padding, shape):
    rng = np.random.default_rng(0)
    x = rng.normal(size=shape).astype("float32")
    ours, stock = make_pair(depthwise, kernel_size, rate, padding, shape[-1], multiplier)
    y_stock = np.asarray(stock(x))
    upstream = rng.normal(size=y_stock.shape).astype("float32")
    mine = output_and_gradients(ours, x, upstream)
    reference = output_and_gradients(stock, x, upstream)
    for name, a, b in zip(
        ["output", "d_input", "d_kernel", "d_bias"], mine, reference, strict=True
    ):
        np.testing.assert_allclose(a, b, atol=1e-5, rtol=1e-5, err_msg=name)
    kernel, bias = (w.numpy() for w in ours.weights)
    expected = numpy_dilated_conv(x.astype("float64"), kernel, rate, padding, depthwise) + bias
    np.testing.assert_allclose(mine[0], expected, atol=1e-4)


@pytest.mark.parametrize("depthwise", [False, True])
def test_partly_known_shapes_in_tf_function(depthwise):
    rng = np.random.default_rng(2)
    ours, stock = make_pair(depthwise, 3, 3, "same", 4)

    @tf.function(input_signature=[tf.TensorSpec([2, None, 9, 4])])
    def step(x):
        with tf.GradientTape() as tape:
            tape.watch(x)
            y = ours(x)
            loss = tf.reduce_sum(y * y)
        return y, tape.gradient(loss, [x, ours.kernel])

    for height in (7, 12):
        x = rng.normal(size=(2, height, 9, 4)).astype("float32")
        y, (dx, dk) = step(tf.constant(x))
        ref = output_and_gradients(stock, x, 2 * np.asarray(stock(x)))
        np.testing.assert_allclose(y, ref[0], atol=1e-5)
        np.testing.assert_allclose(dx, ref[1], atol=1e-4)
        np.testing.assert_allclose(dk, ref[2], rtol=1e-4, atol=1e-3)


def _graph_ops(fn, spec):
    graph = tf.function(fn, input_signature=[spec]).get_concrete_function().graph
    return {
        (op.type, tuple(op.get_attr("dilations")) if "dilations" in op.node_def.attr else ())
        for op in graph.get_operations()
    }


def test_graph_uses_only_portable_kernels():
    # Guards portability on any machine, also where oneDNN would run the non-portable
    # kernels: no dilated depthwise op, no dilated backprop op, no SpaceToBatchND.
    inputs = keras.Input((None, None, 3))
    x = ConvBNReLU(4, 3, dilation_rate=2)(inputs)
    x = AtrousDepthwiseConv2D(3, dilation_rate=3, padding="same")(x)
    model = keras.Model(inputs, x)

    def train_step(images):
        with tf.GradientTape() as tape:
            loss = tf.reduce_sum(model(images, training=True))
        return tape.gradient(loss, model.trainable_weights)

    ops = _graph_ops(train_step, tf.TensorSpec([1, None, 17, 3]))
    types = {t for t, _ in ops}
    assert not types & {
        "SpaceToBatchND",
        "BatchToSpaceND",
        "DepthwiseConv2dNative",
        "Conv2DBackpropInput",
        "Conv2DBackpropFilter",
        "DepthwiseConv2dNativeBackpropInput",
        "DepthwiseConv2dNativeBackpropFilter",
    }, types
    assert ("Conv2D", (1, 2, 2, 1)) in ops  # the dense forward stays one native dilated conv

    with native_dilated_convs():
        native_ops = _graph_ops(lambda images: model(images), tf.TensorSpec([1, None, 17, 3]))
    assert ("DepthwiseConv2dNative", (1, 3, 3, 1)) in native_ops


def test_strided_valid_dilated_depthwise_is_the_subsampled_stride_1_conv():
    # (Keras' Conv2D itself refuses strides with dilation; DepthwiseConv2D accepts them.)
    x = np.random.default_rng(3).normal(size=(1, 11, 12, 2)).astype("float32")
    ours, _ = make_pair(True, 3, 2, "valid", 2)
    strided = AtrousDepthwiseConv2D(3, dilation_rate=2, strides=2, padding="valid")
    strided.build(x.shape)
    strided.set_weights(ours.get_weights())
    np.testing.assert_allclose(strided(x), np.asarray(ours(x))[:, ::2, ::2], atol=1e-6)


def test_invalid_dilation_settings_name_the_layer():
    with pytest.raises(ValueError, match="'dw'.*padding='valid'"):
        AtrousDepthwiseConv2D(3, strides=2, dilation_rate=2, padding="same", name="dw")(
            np.zeros((1, 8, 8, 2))
        )
    with pytest.raises(ValueError, match="same along"):
        AtrousConv2D(2, 3, dilation_rate=(2, 3), name="c")(np.zeros((1, 8, 8, 2)))


def test_tflite_graph_has_fused_dilated_kernels_and_no_space_to_batch():
    from keras_fusionseg import models
    from keras_fusionseg.export.tflite import TFLiteSegmenter, convert_to_tflite

    model = models.build(
        "deeplabv3plus",
        num_classes=3,
        backbone="mobilenetv2",
        backbone_options={"alpha": 0.35},
        output_stride=16,
        separable=True,
        aspp_filters=16,
        decoder_filters=16,
        low_level_filters=8,
    )
    runner = TFLiteSegmenter(convert_to_tflite(model))
    ops = [op["op_name"] for op in runner.interpreter._get_ops_details()]
    assert not {"SPACE_TO_BATCH_ND", "BATCH_TO_SPACE_ND", "ADD_N"} & set(ops), ops
    assert ops.count("MUL") == 1, ops  # the input normalisation; every BN folded into its conv
    assert ops.count("DEPTHWISE_CONV_2D") >= 17 + 3  # 17 MobileNetV2 blocks + 3 ASPP branches
    image = np.random.default_rng(4).integers(0, 256, (45, 70, 3), dtype=np.uint8)
    np.testing.assert_allclose(
        runner.logits(image), model(image[None].astype("float32"))[0], atol=1e-4
    )


@pytest.mark.parametrize("depthwise", [False, True])
def test_mixed_bfloat16_forward_and_gradients(depthwise):
    # --mixed_precision=mixed_bfloat16: kernels are float32 variables read as bfloat16.
    x = np.random.default_rng(5).normal(size=(2, 9, 10, 4)).astype("float32")
    ours, stock = make_pair(depthwise, 3, 2, "same", 4)
    keras.mixed_precision.set_global_policy("mixed_bfloat16")
    try:
        kwargs = dict(kernel_size=3, dilation_rate=2, padding="same", use_bias=True)
        low = AtrousDepthwiseConv2D(**kwargs) if depthwise else AtrousConv2D(5, **kwargs)
        low.build(x.shape)
        low.set_weights(ours.get_weights())
        upstream = np.ones((2, 9, 10, 4 if depthwise else 5), "float32")
        y_low, dx_low, dk_low, _ = output_and_gradients(low, x, upstream)
    finally:
        keras.mixed_precision.set_global_policy("float32")
    assert str(y_low.dtype) == "bfloat16"
    y, dx, dk, _ = output_and_gradients(stock, x, upstream)
    scale = np.abs(y).max()
    np.testing.assert_allclose(y_low.astype("float32"), y, atol=0.03 * scale)
    np.testing.assert_allclose(dx_low.astype("float32"), dx, atol=0.03 * np.abs(dx).max())
    np.testing.assert_allclose(dk_low.astype("float32"), dk, atol=0.03 * np.abs(dk).max())
