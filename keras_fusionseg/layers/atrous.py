"""Atrous (dilated) convolutions that run wherever TensorFlow runs.

Atrous convolution is DeepLabv3+ Sec. 3.1, eq. 1: `y[i] = sum_k x[i + r * k] w[k]`. Stock
TensorFlow offers three ways to run it and each fails somewhere:

- the native ops with `dilations` (`Conv2D`, `DepthwiseConv2dNative`): the CPU kernels of
  builds without oneDNN (AVX2-only x86 with oneDNN off, ARM, macOS) have the dense forward
  conv but no dilated depthwise conv and no dilated gradients ("does not support dilations");
- `tf.nn.convolution` / Keras' own layers (SpaceToBatchND -> conv -> BatchToSpaceND with
  paddings computed from `tf.shape`): Grappler's constant folding computes those paddings from
  a wrong size when batch is known and height unknown ("padded_shape ... not divisible");
- TFLite fuses the native ops into `CONV_2D` / `DEPTHWISE_CONV_2D` with dilation.

So the TensorFlow graph uses only ops and shapes that exist on every device and need no
run-time shape arithmetic (everything below is static: paddings, slices, strides):

- dense (`dilated_conv2d`): the native dilated forward conv, which every CPU and GPU kernel
  has, with a custom gradient made of native *forward* convs: the input gradient is the
  dilated correlation of the padded output gradient with the flipped, transposed kernel; the
  kernel gradient is one strided (undilated) conv of the padded input, batch as channels,
  with the output gradient as its kernel.
- depthwise (`dilated_depthwise_conv2d`): shift-and-add over the k x k taps (static slices of
  the padded input times one kernel tap each), with a custom gradient of the same form (the
  input gradient is shift-and-add with the flipped kernel, the kernel gradient one reduction
  per tap).

`scripts/benchmark_dilated_convs.py` measures these against the alternatives. Under
`native_dilated_convs()` the layers emit the native ops instead; TFLite conversion uses it so
that the converter sees one `CONV_2D` / `DEPTHWISE_CONV_2D` with dilation per layer.
"""

import contextlib
import threading

import keras
import tensorflow as tf

PACKAGE = "keras_fusionseg"

_STATE = threading.local()


@contextlib.contextmanager
def native_dilated_convs():
    """Within this context, dilated layers trace to the native ops with `dilations`.

    For graphs that run where those kernels exist (TFLite's `CONV_2D`/`DEPTHWISE_CONV_2D`,
    CPUs with oneDNN, GPUs with cuDNN). The flag is read when a layer is called (traced),
    per thread.
    """
    previous = getattr(_STATE, "native", False)
    _STATE.native = True
    try:
        yield
    finally:
        _STATE.native = previous


def native_enabled():
    """Whether `native_dilated_convs()` is active in this thread."""
    return getattr(_STATE, "native", False)


def _pads(kernel_size, rate, padding):
    """((top, bottom), (left, right)) that make a VALID dilated conv act like `padding`."""
    if padding == "valid":
        return ((0, 0), (0, 0))
    pads = []
    for k in kernel_size:
        total = rate * (k - 1)
        pads.append((total // 2, total - total // 2))
    return tuple(pads)


def _pad(x, pads):
    if not any(sum(pads, ())):
        return x
    return tf.pad(x, [[0, 0], list(pads[0]), list(pads[1]), [0, 0]])


def _adjoint_pads(kernel_size, rate, pads):
    """Paddings of the output gradient whose VALID correlation gives the input gradient."""
    return tuple(
        (rate * (k - 1) - before, rate * (k - 1) - after)
        for k, (before, after) in zip(kernel_size, pads, strict=True)
    )


def _taps(padded, kernel_size, rate, fn):
    """[fn(i, j, tap)] for every kernel tap; `tap` is the padded input seen by tap (i, j).

    Slices are bounded from the start and from the end, so no run-time shape is needed.
    """
    span_h, span_w = (rate * (k - 1) for k in kernel_size)
    out = []
    for i in range(kernel_size[0]):
        for j in range(kernel_size[1]):
            end_h, end_w = i * rate - span_h, j * rate - span_w
            tap = padded[:, i * rate : end_h or None, j * rate : end_w or None, :]
            out.append(fn(i, j, tap))
    return out


def _check_rate(rate):
    if not isinstance(rate, int) or isinstance(rate, bool) or rate < 1:
        raise ValueError(f"`rate` must be a positive integer, received {rate!r}.")


def dilated_conv2d(x, kernel, rate, padding="same"):
    """Stride-1 dilated `Conv2D` (NHWC, kernel `[kh, kw, in, out]`) that runs on every device.

    Args:
        x: float tensor `[N, H, W, C]`.
        kernel: `[kh, kw, C, O]` with static shape.
        rate: int, the same dilation along height and width.
        padding: `"same"` or `"valid"`.
    """
    _check_rate(rate)
    kernel = tf.convert_to_tensor(kernel)
    kernel_size = tuple(kernel.shape[:2])
    pads = _pads(kernel_size, rate, padding)
    grad_pads = _adjoint_pads(kernel_size, rate, pads)

    @tf.custom_gradient
    def conv(x, kernel):
        y = tf.nn.conv2d(_pad(x, pads), kernel, 1, "VALID", dilations=rate)

        def grad(dy):
            flipped = tf.transpose(tf.reverse(kernel, [0, 1]), [0, 1, 3, 2])
            dx = tf.nn.conv2d(_pad(dy, grad_pads), flipped, 1, "VALID", dilations=rate)
            # dW[i, j, c, o] = sum_{n, h, w} xp[n, h + r i, w + r j, c] dy[n, h, w, o]: a VALID
            # conv with stride r of xp (channels as batch, batch as channels) by dy.
            xt = tf.transpose(_pad(x, pads), [3, 1, 2, 0])
            dyt = tf.transpose(dy, [1, 2, 0, 3])
            dk = tf.nn.conv2d(xt, dyt, rate, "VALID")
            dk = tf.ensure_shape(tf.transpose(dk, [1, 2, 0, 3]), kernel.shape)
            return dx, dk

        return y, grad

    return conv(x, kernel)


def dilated_depthwise_conv2d(x, kernel, rate, padding="same"):
    """Stride-1 dilated depthwise conv (kernel `[kh, kw, C, M]`) that runs on every device.

    Output channel `c * M + m` is input channel `c` convolved with `kernel[..., c, m]`, as in
    `tf.nn.depthwise_conv2d`.
    """
    _check_rate(rate)
    kernel_size = tuple(kernel.shape[:2])
    multiplier = kernel.shape[3]
    if multiplier != 1:
        x = tf.repeat(x, multiplier, axis=-1)
    taps_kernel = tf.reshape(kernel, [*kernel_size, -1])
    pads = _pads(kernel_size, rate, padding)
    grad_pads = _adjoint_pads(kernel_size, rate, pads)

    @tf.custom_gradient
    def conv(x, taps_kernel):
        y = tf.add_n(_taps(_pad(x, pads), kernel_size, rate, lambda i, j, t: t * taps_kernel[i, j]))

        def grad(dy):
            flipped = tf.reverse(taps_kernel, [0, 1])
            dx = tf.add_n(
                _taps(_pad(dy, grad_pads), kernel_size, rate, lambda i, j, t: t * flipped[i, j])
            )
            per_tap = _taps(
                _pad(x, pads), kernel_size, rate, lambda i, j, t: tf.reduce_sum(t * dy, [0, 1, 2])
            )
            dk = tf.reshape(tf.stack(per_tap), taps_kernel.shape)
            return dx, dk

        return y, grad

    return conv(x, taps_kernel)


def _native_depthwise(x, kernel, rate, padding):
    return tf.raw_ops.DepthwiseConv2dNative(
        input=x,
        filter=kernel,
        strides=[1, 1, 1, 1],
        padding=padding.upper(),
        dilations=[1, rate, rate, 1],
    )


def _dilated(layer):
    """(rate, stride) when `layer` needs our path, else None (the stock Keras path).

    A stride with dilation is the stride-1 VALID output subsampled (the explicitly padded
    strided units of the backbones); "same" padding with both has TF's stride-dependent
    padding and is refused.
    """
    rate_h, rate_w = layer.dilation_rate
    if max(rate_h, rate_w) == 1 or layer.data_format != "channels_last":
        return None
    if rate_h != rate_w:
        raise ValueError(
            f"{type(layer).__name__} {layer.name!r}: `dilation_rate` must be the same along "
            f"height and width, received {layer.dilation_rate}."
        )
    stride_h, stride_w = layer.strides
    if max(stride_h, stride_w) > 1 and layer.padding != "valid":
        raise ValueError(
            f"{type(layer).__name__} {layer.name!r}: `strides` > 1 with `dilation_rate` > 1 "
            f"needs padding='valid' (pad explicitly), received strides {layer.strides}, "
            f"dilation_rate {layer.dilation_rate} and padding {layer.padding!r}."
        )
    return rate_h, (stride_h, stride_w)


def _subsample(y, strides):
    if max(strides) == 1:
        return y
    return y[:, :: strides[0], :: strides[1], :]


@keras.saving.register_keras_serializable(package=PACKAGE)
class AtrousConv2D(keras.layers.Conv2D):
    """`keras.layers.Conv2D` whose dilated kernels run on every device (`dilated_conv2d`).

    Atrous convolution, DeepLabv3+ Sec. 3.1, eq. 1. Weights and config are those of
    `Conv2D`; with `dilation_rate` 1 it is `Conv2D`.
    """

    def convolution_op(self, inputs, kernel):
        dilated = _dilated(self)
        if dilated is None or self.groups != 1:
            return super().convolution_op(inputs, kernel)
        rate, strides = dilated
        if native_enabled():
            outputs = tf.nn.conv2d(inputs, kernel, 1, self.padding.upper(), dilations=rate)
        else:
            outputs = dilated_conv2d(inputs, kernel, rate, self.padding)
        return _subsample(outputs, strides)


@keras.saving.register_keras_serializable(package=PACKAGE)
class AtrousDepthwiseConv2D(keras.layers.DepthwiseConv2D):
    """`keras.layers.DepthwiseConv2D` whose dilated kernels run on every device.

    The depthwise half of atrous separable convolution (DeepLabv3+ Sec. 3.1); see
    `dilated_depthwise_conv2d`. With `dilation_rate` 1 it is `DepthwiseConv2D`.
    """

    def call(self, inputs):
        dilated = _dilated(self)
        if dilated is None:
            return super().call(inputs)
        rate, strides = dilated
        kernel = tf.cast(self.kernel, inputs.dtype)
        if native_enabled():
            outputs = _native_depthwise(inputs, kernel, rate, self.padding)
        else:
            outputs = dilated_depthwise_conv2d(inputs, kernel, rate, self.padding)
        outputs = _subsample(outputs, strides)
        if self.use_bias:
            outputs = outputs + tf.cast(self.bias, outputs.dtype)
        if self.activation is not None:
            outputs = self.activation(outputs)
        return outputs
