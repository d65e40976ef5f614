"""Backbones with a controllable output stride; see `registry` for the contract."""

from keras_fusionseg.backbones import mobilenet_v2, resnet, xception  # noqa: F401  (registration)
from keras_fusionseg.backbones.registry import (  # noqa: F401
    VALID_OUTPUT_STRIDES,
    build_backbone,
    list_backbones,
    register_backbone,
)
