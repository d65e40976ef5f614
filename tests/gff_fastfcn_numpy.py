"""Small NumPy references of the GFF / PSPNet / FastFCN / EncNet equations, for layer tests.

Written in plain loops on purpose: they restate the papers' equations independently of the
TensorFlow code they check.
"""

import math

import numpy as np


def resize_bilinear(x, out_h, out_w):
    """TF bilinear resize with half-pixel centres and no antialiasing, NHWC."""

    def axis_weights(in_size, out_size):
        scale = in_size / out_size
        coords = (np.arange(out_size) + 0.5) * scale - 0.5
        floor = np.floor(coords)
        lower = np.maximum(floor, 0).astype(int)
        upper = np.minimum(floor + 1, in_size - 1).astype(int)
        upper = np.maximum(upper, 0)
        return lower, upper, coords - floor

    h0, h1, fh = axis_weights(x.shape[1], out_h)
    w0, w1, fw = axis_weights(x.shape[2], out_w)
    top = x[:, h0] * (1 - fh)[None, :, None, None] + x[:, h1] * fh[None, :, None, None]
    return top[:, :, w0] * (1 - fw)[None, None, :, None] + top[:, :, w1] * fw[None, None, :, None]


def conv2d(x, kernel, dilation=1, bias=None):
    """Stride-1 'same' convolution, kernel (kh, kw, cin, cout)."""
    kh, kw = kernel.shape[:2]
    ph, pw = (kh - 1) * dilation, (kw - 1) * dilation
    padded = np.pad(x, ((0, 0), (ph // 2, ph - ph // 2), (pw // 2, pw - pw // 2), (0, 0)))
    h, w = x.shape[1:3]
    out = np.zeros((*x.shape[:3], kernel.shape[3]))
    for i in range(kh):
        for j in range(kw):
            patch = padded[:, i * dilation : i * dilation + h, j * dilation : j * dilation + w]
            out += patch @ kernel[i, j]
    return out if bias is None else out + bias


def depthwise_conv2d(x, kernel, dilation=1):
    """Stride-1 'same' depthwise convolution, kernel (kh, kw, c, 1)."""
    kh, kw = kernel.shape[:2]
    ph, pw = (kh - 1) * dilation, (kw - 1) * dilation
    padded = np.pad(x, ((0, 0), (ph // 2, ph - ph // 2), (pw // 2, pw - pw // 2), (0, 0)))
    h, w = x.shape[1:3]
    out = np.zeros_like(x, dtype=float)
    for i in range(kh):
        for j in range(kw):
            patch = padded[:, i * dilation : i * dilation + h, j * dilation : j * dilation + w]
            out += patch * kernel[i, j, :, 0]
    return out


def batch_norm(x, bn, axis=-1):
    """Inference batch norm with the weights of a Keras BatchNormalization layer."""
    shape = [1] * x.ndim
    shape[axis] = -1
    gamma, beta, mean, var = (np.asarray(v).reshape(shape) for v in _bn_values(bn))
    return (x - mean) / np.sqrt(var + bn.epsilon) * gamma + beta


def _bn_values(bn):
    return (
        bn.gamma.numpy(),
        bn.beta.numpy(),
        bn.moving_mean.numpy(),
        bn.moving_variance.numpy(),
    )


def relu(x):
    return np.maximum(x, 0)


def sigmoid(x):
    return 1 / (1 + np.exp(-x))


def conv_bn_relu(x, unit):
    """A `ConvBNReLU` (stride 1) in NumPy."""
    y = conv2d(x, unit.conv.kernel.numpy(), unit.dilation_rate)
    y = batch_norm(y, unit.bn)
    return relu(y) if unit.activation == "relu" else y


def adaptive_average_pool(x, bins):
    """Adaptive average pooling: bin i spans [floor(i*H/b), ceil((i+1)*H/b))."""
    h, w = x.shape[1:3]
    out = np.zeros((x.shape[0], bins, bins, x.shape[3]))
    for i in range(bins):
        r0, r1 = (i * h) // bins, math.ceil((i + 1) * h / bins)
        for j in range(bins):
            c0, c1 = (j * w) // bins, math.ceil((j + 1) * w / bins)
            out[:, i, j] = x[:, r0:r1, c0:c1].mean(axis=(1, 2))
    return out


def randomize_weights(layer, rng):
    """Random values for every weight, positive variances, so BN is not the identity."""
    for weight in layer.weights:
        shape = tuple(weight.shape)
        if "moving_variance" in weight.path:
            weight.assign(rng.uniform(0.5, 1.5, shape).astype("float32"))
        elif "smoothing" in weight.path:
            weight.assign(rng.uniform(-1.0, -0.1, shape).astype("float32"))
        else:
            weight.assign(rng.normal(0, 0.3, shape).astype("float32"))


def fit_two_steps(model, num_classes, rng, size=(64, 64), batch=2):
    """Compiles with losses from `model.loss_spec` and trains 2 steps; returns the losses.

    Test-local losses (sparse CE with labels resized by nearest to each segmentation output,
    binary CE on class presence) keep these tests independent of the training package.
    """
    import keras
    import tensorflow as tf

    from keras_fusionseg.models import PRESENCE

    def segmentation_loss(y_true, y_pred):
        labels = tf.image.resize(y_true, tf.shape(y_pred)[1:3], method="nearest")
        return keras.losses.sparse_categorical_crossentropy(labels, y_pred, from_logits=True)

    def presence_loss(y_true, y_pred):
        return keras.losses.binary_crossentropy(y_true, y_pred, from_logits=True)

    images = rng.uniform(0, 255, size=(2 * batch, *size, 3)).astype("float32")
    labels = rng.integers(0, num_classes, size=(2 * batch, *size, 1)).astype("int32")
    presence = np.stack([np.isin(np.arange(num_classes), lab).astype("float32") for lab in labels])
    spec = model.loss_spec
    if list(spec) == ["logits"]:
        model.compile(optimizer="sgd", loss=segmentation_loss, run_eagerly=True)
        targets = labels
    else:
        losses = {
            k: presence_loss if kind == PRESENCE else segmentation_loss
            for k, (kind, _) in spec.items()
        }
        model.compile(
            optimizer="sgd",
            loss=losses,
            loss_weights={k: w for k, (_, w) in spec.items()},
            run_eagerly=True,
        )
        targets = {k: presence if kind == PRESENCE else labels for k, (kind, _) in spec.items()}
    # Two `train_on_batch` steps: the same training step as `fit`, without its data pipeline.
    losses = []
    for step in range(2):
        part = slice(step * batch, (step + 1) * batch)
        batch_targets = (
            targets[part]
            if isinstance(targets, np.ndarray)
            else {k: v[part] for k, v in targets.items()}
        )
        logs = model.train_on_batch(images[part], batch_targets, return_dict=True)
        losses.append(float(logs["loss"]))
    return {"loss": losses}
