"""keras_fusionseg: DeepLabv3+, GFF, FastFCN/JPU, DUpsampling and ExFuse in Keras 3."""

from keras_fusionseg import backbones, data, layers, models

__version__ = "0.1.0"
__all__ = ["backbones", "data", "layers", "models"]
