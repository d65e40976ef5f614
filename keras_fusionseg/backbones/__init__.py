"""Backbones with a controllable output stride; see `registry` for the contract."""

from keras_fusionseg.backbones import (  # noqa: F401  (registration)
    keras_hub,
    mobilenet_v2,
    resnet,
    xception,
)
from keras_fusionseg.backbones.registry import (  # noqa: F401
    VALID_OUTPUT_STRIDES,
    build_backbone,
    list_backbones,
    register_backbone,
)
