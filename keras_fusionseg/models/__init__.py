"""Segmentation models: `build(name, ...)` and `list_models()`."""

from keras_fusionseg.models import deeplab, dunet, exfuse, fastfcn, gff  # noqa: F401  (registration)
from keras_fusionseg.models.registry import (  # noqa: F401
    PRESENCE,
    SEGMENTATION,
    build,
    finalize_outputs,
    get_model_spec,
    list_models,
    register_model,
)
