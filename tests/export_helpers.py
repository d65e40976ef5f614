"""Small hand-made segmentation models for the export, TFLite, predict and serve tests."""

import keras

from keras_fusionseg.layers import ConvBNReLU, ImageNormalization, ResizeToReference


def tiny_segmenter(num_classes=3, channels=3, input_size=(None, None), seed=0):
    """Raw pixels -> logits at input resolution, stride 4 with a dilated conv, like our heads."""
    keras.utils.set_random_seed(seed)
    inputs = keras.Input((*input_size, channels))
    x = ImageNormalization("tf")(inputs)
    features = ConvBNReLU(8, 3, strides=2)(x)
    features = ConvBNReLU(8, 3, strides=2)(features)
    features = ConvBNReLU(8, 3, dilation_rate=2)(features)
    logits = keras.layers.Conv2D(num_classes, 1)(features)
    logits = ResizeToReference()([logits, inputs])
    model = keras.Model(inputs, logits)
    # Non-trivial BN statistics, so that inference-mode batch norm is exercised.
    for layer in model.layers:
        for sub in getattr(layer, "_layers", []):
            if isinstance(sub, keras.layers.BatchNormalization):
                sub.moving_mean.assign(keras.random.normal(sub.moving_mean.shape, stddev=0.1))
                sub.moving_variance.assign(
                    keras.random.uniform(sub.moving_variance.shape, 0.5, 1.5)
                )
    return model
