"""Segmentation data: dataset registry, sources (`load_split`) and `tf.data` pipelines.

```python
from keras_fusionseg import data

train = data.training_pipeline(
    data.load_split("synthetic_shapes", "train"), crop_size=96, batch_size=8, seed=0
)
val = data.eval_pipeline(data.load_split("synthetic_shapes", "val"))
info = data.get_dataset_info("synthetic_shapes")  # num_classes, class_names, palette, ...
```

For file sources, `data.load_encoded_split` (same arguments) hands `training_pipeline` the
stored records, which it shuffles before decoding; `data.resolve_source` says what a source
name means.
"""

from keras_fusionseg.data.pipeline import (
    DEFAULT_COLOR_JITTER,
    eval_pipeline,
    training_pipeline,
)
from keras_fusionseg.data.registry import (
    IGNORE_LABEL,
    DatasetInfo,
    get_dataset_info,
    list_datasets,
    register_dataset,
)
from keras_fusionseg.data.sources import (
    EncodedSplit,
    load_encoded_split,
    load_split,
    resolve_source,
)

__all__ = [
    "DEFAULT_COLOR_JITTER",
    "IGNORE_LABEL",
    "DatasetInfo",
    "EncodedSplit",
    "eval_pipeline",
    "get_dataset_info",
    "list_datasets",
    "load_encoded_split",
    "load_split",
    "register_dataset",
    "resolve_source",
    "training_pipeline",
]
