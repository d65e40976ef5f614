"""Segmentation models: `build(name, ...)`, `list_models()`, and the trained presets
(`from_preset(name)`, `list_presets()`)."""

from keras_fusionseg.models import deeplab, dunet, exfuse, fastfcn, gff  # noqa: F401  (registration)
from keras_fusionseg.models.presets import (  # noqa: F401, E402
    from_preset,
    list_presets,
    load_preset_metadata,
)
from keras_fusionseg.models.registry import (  # noqa: F401
    PRESENCE,
    SEGMENTATION,
    build,
    finalize_outputs,
    get_model_spec,
    list_models,
    register_model,
)
