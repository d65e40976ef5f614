"""Segmentation data: dataset registry, sources (`load_split`) and `tf.data` pipelines.

```python
from keras_fusionseg import data

train = data.training_pipeline(
    data.load_split("synthetic_shapes", "train"), crop_size=96, batch_size=8, seed=0
)
val = data.eval_pipeline(data.load_split("synthetic_shapes", "val"))
info = data.get_dataset_info("synthetic_shapes")  # num_classes, class_names, palette, ...
```
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
from keras_fusionseg.data.sources import load_split

__all__ = [
    "DEFAULT_COLOR_JITTER",
    "IGNORE_LABEL",
    "DatasetInfo",
    "eval_pipeline",
    "get_dataset_info",
    "list_datasets",
    "load_split",
    "register_dataset",
    "training_pipeline",
]
