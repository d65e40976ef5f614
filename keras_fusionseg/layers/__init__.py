"""Keras layers, one module per paper (see README's "Where things live")."""

from keras_fusionseg.layers import deeplabv3plus, dupsampling, exfuse, fastfcn, gff  # noqa: F401
from keras_fusionseg.layers.common import (  # noqa: F401
    AtrousConv2D,
    AtrousDepthwiseConv2D,
    ConvBNReLU,
    ImageNormalization,
    ResizeToReference,
    SeparableConvBN,
)
