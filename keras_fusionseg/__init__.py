"""keras_fusionseg: DeepLabv3+, GFF, FastFCN/JPU, DUpsampling and ExFuse in Keras 3."""

# `training` registers the optimizer and schedule that training checkpoints (.keras) contain.
from keras_fusionseg import backbones, data, evaluation, layers, models, training

__version__ = "0.1.0"
__all__ = ["backbones", "data", "evaluation", "layers", "models", "training"]
