"""A tiny registered backbone ("tiny_test_backbone") so training tests trace and run fast.

It follows the backbone contract (dict `pyramid_outputs` P1..P5, `pyramid_channels`,
`output_stride`) and includes batch normalization (for the synchronized-BN option).
"""

import keras

from keras_fusionseg.backbones import registry

NAME = "tiny_test_backbone"


def build_tiny_backbone(input_shape=(None, None, 3), output_stride=16, **options):
    del options  # accepts e.g. the configs' `alpha`
    image = keras.Input(input_shape)
    x = keras.layers.Rescaling(1 / 127.5, offset=-1.0)(image)
    outputs = {}
    channels = {"P1": 4, "P2": 8, "P3": 8, "P4": 8, "P5": 8}
    stride = 1
    for level in ("P1", "P2", "P3", "P4", "P5"):
        step = 2 if stride < output_stride else 1
        dilation = 1 if step == 2 else 2
        x = keras.layers.Conv2D(
            channels[level], 3, strides=step, dilation_rate=dilation, padding="same", use_bias=False
        )(x)
        x = keras.layers.BatchNormalization()(x)
        x = keras.layers.ReLU()(x)
        stride *= step
        outputs[level] = x
    model = keras.Model(image, outputs, name=NAME)
    model.pyramid_outputs = outputs
    model.pyramid_channels = channels
    model.output_stride = output_stride
    return model


if NAME not in registry.list_backbones():
    registry.register_backbone(NAME, "tiny test backbone")(build_tiny_backbone)
