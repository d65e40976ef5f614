"""Any keras-hub feature-pyramid backbone (ResNet, MiT, ...) as a backbone of our models.

keras-hub backbones expose `pyramid_outputs`, but two things differ from our contract
(`registry`): they take preprocessed images (the preset's image converter rescales raw pixels),
and not all key their levels by stride: ResNet's `"P2".."P5"` have strides 4..32 like ours,
MiT's `"P1".."P4"` (one per stage) have strides 4..32 as well. `from_keras_hub` adds the
normalisation as the first layer, so models take raw [0, 255] pixels like every other model
here, and renames the levels by their measured stride. keras-hub itself is not imported: any
functional `keras.Model` with a `pyramid_outputs` dict works. Loading a saved model that uses
it needs this module imported (it registers `KerasHubFeatures`) and keras-hub installed.

Example:

    import keras_hub
    from keras_fusionseg import models
    from keras_fusionseg.backbones.keras_hub import from_keras_hub

    encoder = keras_hub.models.ResNetBackbone.from_preset("resnet_50_imagenet")
    backbone = from_keras_hub(encoder, normalization="torch")
    model = models.build("deeplabv3plus", num_classes=21, backbone=backbone)
"""

import math

import keras

from keras_fusionseg.backbones.checks import pyramid_model
from keras_fusionseg.layers.common import PACKAGE, ImageNormalization

# Probe size for backbones built with unknown height and width (a multiple of every stride).
_PROBE_SIZE = 256
_DEEPEST_LEVEL = 5


def from_keras_hub(backbone, *, normalization, input_shape=None, name=None):
    """Wraps a keras-hub backbone into this library's backbone contract.

    Args:
        backbone: functional `keras.Model` with one image input and a `pyramid_outputs` dict
            of channels-last feature maps (every keras-hub `FeaturePyramidBackbone`). Its
            weights are shared, not copied. Models built on the result save as `.keras` if
            `backbone` does (it is stored by its own config).
        normalization: str, one of `ImageNormalization.MODES`: what the backbone's weights
            expect, as its preset's image converter says (keras-hub ResNet v1 presets: scale
            1/(255 std) and offset -mean/std, i.e. `"torch"`; ResNet v2 presets: [-1, 1],
            i.e. `"tf"`; `"none"` for random weights or inputs you preprocess yourself).
        input_shape: (H, W, C) of the wrapper; default the backbone's input shape.
        name: name of the wrapper model; default `"<backbone name>_pyramid"`.

    Returns:
        A functional `keras.Model` taking raw RGB pixels in [0, 255], with dict outputs
        `"P<l>"` (stride `2**l`; levels with the same stride at the end of the network, as in a
        dilated backbone, take the next keys) and the attributes `pyramid_outputs`,
        `pyramid_channels` and `output_stride`. Levels coarser than stride 32 are left out.
    """
    levels = _check_backbone(backbone)
    if normalization not in ImageNormalization.MODES:
        raise ValueError(
            f"`normalization` must be one of {list(ImageNormalization.MODES)}, "
            f"received {normalization!r}."
        )
    input_shape = tuple(backbone.inputs[0].shape[1:] if input_shape is None else input_shape)
    if len(input_shape) != 3:
        raise ValueError(
            f"`input_shape` must be (height, width, channels), received {input_shape!r}."
        )
    strides = _level_strides(backbone, levels)
    keys = _our_keys(strides)

    inputs = keras.Input(input_shape)
    x = ImageNormalization(normalization, name="keras_hub_normalization")(inputs)
    pyramid = KerasHubFeatures(backbone, keys, name=f"{backbone.name}_features")(x)
    output_stride = max(strides[theirs] for theirs in keys)
    return pyramid_model(inputs, pyramid, output_stride, name or f"{backbone.name}_pyramid")


@keras.saving.register_keras_serializable(package=PACKAGE)
class KerasHubFeatures(keras.layers.Layer):
    """The pyramid of a keras-hub backbone as one layer, with the levels renamed.

    Calling a keras-hub backbone gives only its last map, so this layer runs the backbone's own
    layers up to every pyramid level. It is saved as the backbone's config (plus `keys`), not
    as a graph of the backbone's inner layers: keras-hub rebuilds its backbones from their
    constructor arguments, and some inner layers (MiT's) do not load from their own configs.

    Args:
        backbone: functional `keras.Model` with one input and a `pyramid_outputs` dict.
        keys: dict, the backbone's level key -> output key (levels not in it are dropped).
    """

    def __init__(self, backbone, keys, **kwargs):
        super().__init__(**kwargs)
        levels = _check_backbone(backbone)
        missing = sorted(set(keys) - set(levels))
        if missing:
            raise ValueError(
                f"`keys` names levels {missing} that `backbone` {backbone.name!r} does not have; "
                f"its `pyramid_outputs` has {sorted(levels)}."
            )
        self.backbone = backbone
        self.keys = dict(keys)
        # Shares the backbone's layers (and weights); the backbone is already built.
        self.features = keras.Model(backbone.inputs[0], {theirs: levels[theirs] for theirs in keys})
        self.built = True

    def call(self, inputs, training=None):
        features = self.features(inputs, training=training)
        return {ours: features[theirs] for theirs, ours in self.keys.items()}

    def compute_output_spec(self, inputs):
        features = self.features.compute_output_spec(inputs)
        return {ours: features[theirs] for theirs, ours in self.keys.items()}

    def get_config(self):
        return {
            **super().get_config(),
            "backbone": keras.saving.serialize_keras_object(self.backbone),
            "keys": dict(self.keys),
        }

    @classmethod
    def from_config(cls, config):
        config = dict(config)
        config["backbone"] = keras.saving.deserialize_keras_object(config["backbone"])
        return cls(**config)


def _check_backbone(backbone):
    if not isinstance(backbone, keras.Model) or len(getattr(backbone, "inputs", None) or []) != 1:
        raise ValueError(
            "`backbone` must be a functional `keras.Model` with one (image) input, received "
            f"{type(backbone).__name__}."
        )
    levels = getattr(backbone, "pyramid_outputs", None)
    if not isinstance(levels, dict) or not levels:
        raise ValueError(
            f"`backbone` {backbone.name!r} has no `pyramid_outputs` dict of feature maps "
            f"(received {levels!r}); keras-hub's feature-pyramid backbones have one."
        )
    for key, tensor in levels.items():
        if len(tensor.shape) != 4:
            raise ValueError(
                f"`pyramid_outputs[{key!r}]` of {backbone.name!r} must be a 4D "
                f"(batch, height, width, channels) map, received shape {tensor.shape}."
            )
    return dict(levels)


def _level_strides(backbone, levels):
    """Stride of each level from static shapes, probing a fixed size if the input has none."""
    height = backbone.inputs[0].shape[1]
    heights = {key: tensor.shape[1] for key, tensor in levels.items()}
    if not height or None in heights.values():
        height = _PROBE_SIZE
        probe_shape = (1, height, height, backbone.inputs[0].shape[-1])
        probe = keras.Model(backbone.inputs[0], levels).compute_output_spec(
            keras.KerasTensor(probe_shape)
        )
        heights = {key: probe[key].shape[1] for key in levels}
    strides = {}
    for key, feature_height in heights.items():
        ratio = height / feature_height
        stride = 2 ** round(math.log2(ratio))
        if stride < 2 or abs(ratio - stride) > 0.25 * stride:
            raise ValueError(
                f"`pyramid_outputs[{key!r}]` has {feature_height} rows for {height} input rows "
                f"(stride {ratio:.2f}); only power-of-two strides >= 2 map to our levels P1..P5."
            )
        strides[key] = stride
    return strides


def _our_keys(strides):
    """Their key -> ours ("P<log2 stride>"), deepest stride repeated: following keys."""
    ordered = sorted(strides, key=lambda key: strides[key])  # stable: ties keep network order
    deepest = strides[ordered[-1]]
    keys, previous = {}, 0
    for key in ordered:
        level = int(math.log2(strides[key]))
        if level <= previous:
            if strides[key] != deepest:
                raise ValueError(
                    f"Two pyramid levels have stride {strides[key]} ({strides}); only the "
                    "deepest stride may repeat (a dilated backbone)."
                )
            level = previous + 1
        if level > _DEEPEST_LEVEL:
            continue
        keys[key] = f"P{level}"
        previous = level
    return keys
