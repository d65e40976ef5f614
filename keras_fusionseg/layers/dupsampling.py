"""DUpsampling blocks: data-dependent upsampling and the adaptive-temperature softmax.

Tian, He, Shen, Yan, "Decoders Matter for Semantic Segmentation: Data-Dependent Decoding
Enables Flexible Feature Aggregation", CVPR 2019. Sec. 3.1 (eqs. 2 and 5, Fig. 3) and
Sec. 3.2 (eq. 6). The reconstruction matrix W is fitted by
`keras_fusionseg.layers.dupsampling_pca.fit_dupsampling`.

Channel order: the N = r*r*num_classes outputs of the 1x1 projection are ordered
[row offset a][column offset b][class c], index (a*r + b)*num_classes + c, which is the order
`tf.nn.depth_to_space(block_size=r)` (NHWC, "DCR") reads, so the rearrangement to space is
that single op (TFLite has a kernel for it).
"""

import keras
import numpy as np
import tensorflow as tf

from keras_fusionseg.layers.common import PACKAGE, check_positive_int


def fit_to_reference(x, reference):
    """NHWC `x` (top-left anchored) made the height and width of `reference`: cropped at the
    bottom/right where larger, extended by repeating its last row/column where smaller.

    Exact-factor upsampling (DUpsampling's r x r patches, ECRE's sub-pixel x2, deconvolutions)
    of a backbone that pads stride-2 convs "same"-like gives r * ceil(H / r) >= H rows: a crop.
    A backbone that halves odd sizes down (MobileNetV2 with its ImageNet-compatible padding,
    `strided_padding="keras"`) gives fewer rows than the reference: the missing last rows
    (fewer than r) repeat the last predicted one instead of failing or returning a smaller map.
    """
    size = tf.shape(reference)[1:3]
    shape = tf.shape(x)
    rows = tf.minimum(tf.range(size[0]), shape[1] - 1)
    cols = tf.minimum(tf.range(size[1]), shape[2] - 1)
    return tf.gather(tf.gather(x, rows, axis=1), cols, axis=2)


@keras.saving.register_keras_serializable(package=PACKAGE)
class DUpsampling(keras.layers.Layer):
    """Data-dependent upsampling: a fixed 1x1 projection with W plus the mean, then depth-to-space.

    Paper: "Decoders Matter for Semantic Segmentation", CVPR 2019, Sec. 3.1, eq. 2
    (v~ = W x + mean) applied at every position of F as a 1x1 convolution (eq. 5, Fig. 3),
    followed by rearranging the N = r*r*num_classes channels of each position into an r x r
    patch of per-class scores.

    W (N x C~) and the mean (N) are layer weights, so they are saved in `.keras` files; they
    are non-trainable unless `trainable_reconstruction=True` (the paper keeps W fixed).
    Without fitted values, W starts as a random matrix with orthonormal columns and the mean
    as 1/num_classes everywhere (the mean of uniformly random one-hot labels); pass the result
    of `fit_dupsampling` (or `model.get_layer(...).set_reconstruction(...)`) for real use.

    Call with `x` (batch, h, w, C~) or `[x, reference]`; with a reference the output (size
    (h*r, w*r)) is cropped at the bottom/right to the reference's height and width, which is
    the same as padding the label bottom/right to a multiple of r (paper Sec. 3.1); where it is
    smaller (a backbone that halves odd sizes down), its last row/column is repeated
    (`fit_to_reference`).

    Args:
        ratio: int r, the upsampling factor (16 or 32 in the paper).
        num_classes: int, classes C of the label space.
        code_channels: int C~, channels of the compressed code (64 for ResNet-50, 128 for
            Xception-65 in the paper).
        reconstruction: optional array (N, C~), the fitted W.
        mean: optional array (N,), the fitted mean of the label patches.
        trainable_reconstruction: bool, learn W and the mean too (default False).

    Example:
    >>> import numpy as np
    >>> layer = DUpsampling(ratio=4, num_classes=3, code_channels=8)
    >>> tuple(layer(np.zeros((1, 2, 2, 8), "float32")).shape)
    (1, 8, 8, 3)
    """

    def __init__(
        self,
        ratio,
        num_classes,
        code_channels,
        reconstruction=None,
        mean=None,
        trainable_reconstruction=False,
        **kwargs,
    ):
        super().__init__(**kwargs)
        check_positive_int("ratio", ratio)
        check_positive_int("num_classes", num_classes)
        check_positive_int("code_channels", code_channels)
        self.ratio = int(ratio)
        self.num_classes = int(num_classes)
        self.code_channels = int(code_channels)
        self.trainable_reconstruction = bool(trainable_reconstruction)
        n = self.ratio * self.ratio * self.num_classes
        self._initial_reconstruction = None
        self._initial_mean = None
        if reconstruction is not None:
            reconstruction = np.asarray(reconstruction, dtype="float32")
            if reconstruction.shape != (n, self.code_channels):
                raise ValueError(
                    "`reconstruction` must have shape (ratio*ratio*num_classes, code_channels) = "
                    f"{(n, self.code_channels)}, received {reconstruction.shape}."
                )
            self._initial_reconstruction = reconstruction
        if mean is not None:
            mean = np.asarray(mean, dtype="float32")
            if mean.shape != (n,):
                raise ValueError(
                    f"`mean` must have shape (ratio*ratio*num_classes,) = {(n,)}, "
                    f"received {mean.shape}."
                )
            self._initial_mean = mean

    @property
    def patch_dim(self):
        """N = r * r * num_classes."""
        return self.ratio * self.ratio * self.num_classes

    def build(self, input_shape):
        shape = input_shape[0] if isinstance(input_shape[0], list | tuple) else input_shape
        if shape[-1] is not None and shape[-1] != self.code_channels:
            raise ValueError(
                f"DUpsampling expects {self.code_channels} input channels (`code_channels`), "
                f"received an input of shape {tuple(shape)}."
            )
        n = self.patch_dim
        if self._initial_reconstruction is not None:
            w_init = keras.initializers.Constant(self._initial_reconstruction)
        else:
            # Orthonormal columns, like a PCA basis fitted on nothing.
            w_init = keras.initializers.Orthogonal(seed=0)
        if self._initial_mean is not None:
            mean_init = keras.initializers.Constant(self._initial_mean)
        else:
            mean_init = keras.initializers.Constant(1.0 / self.num_classes)
        self.reconstruction = self.add_weight(
            name="reconstruction",
            shape=(n, self.code_channels),
            initializer=w_init,
            trainable=self.trainable_reconstruction,
        )
        self.mean = self.add_weight(
            name="mean", shape=(n,), initializer=mean_init, trainable=self.trainable_reconstruction
        )

    def set_reconstruction(self, reconstruction, mean):
        """Assigns a fitted W (N, C~) and mean (N,) to a built layer."""
        reconstruction = np.asarray(reconstruction, dtype="float32")
        mean = np.asarray(mean, dtype="float32")
        if reconstruction.shape != tuple(self.reconstruction.shape) or mean.shape != tuple(
            self.mean.shape
        ):
            raise ValueError(
                f"`reconstruction`/`mean` must have shapes {tuple(self.reconstruction.shape)} and "
                f"{tuple(self.mean.shape)}, received {reconstruction.shape} and {mean.shape}."
            )
        self.reconstruction.assign(reconstruction)
        self.mean.assign(mean)

    def call(self, inputs):
        x, reference = (
            (inputs[0], inputs[1]) if isinstance(inputs, list | tuple) else (inputs, None)
        )
        # The 1x1 convolution of paper Fig. 3 (a Conv2D op: TFLite kernel, counted as MACs).
        kernel = tf.reshape(
            tf.transpose(tf.cast(self.reconstruction, x.dtype)), (1, 1, -1, self.patch_dim)
        )
        patches = tf.nn.conv2d(x, kernel, strides=1, padding="VALID") + tf.cast(self.mean, x.dtype)
        y = tf.nn.depth_to_space(patches, self.ratio)
        if reference is not None:
            y = fit_to_reference(y, reference)
        return y

    def compute_output_shape(self, input_shape):
        if isinstance(input_shape[0], list | tuple):
            x_shape, ref_shape = input_shape
            return (x_shape[0], ref_shape[1], ref_shape[2], self.num_classes)
        h, w = input_shape[1:3]
        return (
            input_shape[0],
            None if h is None else h * self.ratio,
            None if w is None else w * self.ratio,
            self.num_classes,
        )

    def get_config(self):
        # W and the mean are weights (saved with the model), not config.
        return {
            **super().get_config(),
            "ratio": self.ratio,
            "num_classes": self.num_classes,
            "code_channels": self.code_channels,
            "trainable_reconstruction": self.trainable_reconstruction,
        }


@keras.saving.register_keras_serializable(package=PACKAGE)
class AdaptiveTemperatureSoftmax(keras.layers.Layer):
    """Softmax with a learnable temperature T (initialised to 1): softmax(z / T).

    Paper: "Decoders Matter for Semantic Segmentation", CVPR 2019, Sec. 3.2, eq. 6. T is
    learnt by back-propagation with the rest of the network.

    By default the layer returns the tempered logits z / T and leaves the softmax to the loss:
    a model whose `"logits"` output is z / T, trained with ordinary softmax cross-entropy
    from logits, minimises exactly the paper's eq. 6 loss (and argmax predictions do not
    depend on T). With `apply_softmax=True` it returns softmax(z / T).

    Args:
        initial_temperature: float > 0, the starting T (1 in the paper).
        min_temperature: float > 0, T is clipped from below to this value in `call` so a
            gradient step can never make it zero or negative.
        apply_softmax: bool, return probabilities instead of tempered logits.

    Example:
    >>> import numpy as np
    >>> layer = AdaptiveTemperatureSoftmax(apply_softmax=True)
    >>> np.asarray(layer(np.zeros((1, 2, 2, 4), "float32")))[0, 0, 0].tolist()
    [0.25, 0.25, 0.25, 0.25]
    """

    def __init__(
        self, initial_temperature=1.0, min_temperature=1e-3, apply_softmax=False, **kwargs
    ):
        super().__init__(**kwargs)
        for name, value in (
            ("initial_temperature", initial_temperature),
            ("min_temperature", min_temperature),
        ):
            if not isinstance(value, int | float) or isinstance(value, bool) or value <= 0:
                raise ValueError(f"`{name}` must be a positive number, received {value!r}.")
        self.initial_temperature = float(initial_temperature)
        self.min_temperature = float(min_temperature)
        self.apply_softmax = bool(apply_softmax)

    def build(self, input_shape):
        self.temperature = self.add_weight(
            name="temperature",
            shape=(),
            initializer=keras.initializers.Constant(self.initial_temperature),
            trainable=True,
        )

    def call(self, z):
        t = tf.maximum(tf.cast(self.temperature, z.dtype), tf.cast(self.min_temperature, z.dtype))
        z = z / t
        return tf.nn.softmax(z, axis=-1) if self.apply_softmax else z

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        return {
            **super().get_config(),
            "initial_temperature": self.initial_temperature,
            "min_temperature": self.min_temperature,
            "apply_softmax": self.apply_softmax,
        }
