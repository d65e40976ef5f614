"""Segmentation models: `build(name, ...)`, `list_models()`, the trained presets
(`from_preset(name)`, `list_presets()`), and `describe_model` (what a loaded model is and
which dataset it was trained on)."""

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
from keras_fusionseg.models.segmentation_model import (  # noqa: F401
    SegmentationModel,
    describe_model,
    rebuild_kwargs,
    record_dataset,
)
