"""Every registered model (tiny variant, 64x64) exports to a SavedModel and converts to TFLite.

Models are read from the registry at collection time, so new models are covered automatically.
Serving-signature variants (bytes, examples, sizes) are tested once in test_export_saved_model.
"""

import numpy as np
import pytest
import tensorflow as tf

from keras_fusionseg import models
from keras_fusionseg.export import TFLiteSegmenter, convert_to_tflite, export_saved_model

NUM_CLASSES = 3
SIZE = 64


@pytest.mark.parametrize("name", models.list_models())
def test_model_exports_and_converts(name, tmp_path, rng):
    model = models.build(name, num_classes=NUM_CLASSES, **models.get_model_spec(name).tiny)
    image = rng.integers(0, 256, (1, SIZE, SIZE, 3), dtype=np.uint8)
    logits = model(image.astype("float32"), training=False)
    logits = (logits["logits"] if isinstance(logits, dict) else logits).numpy()

    export_saved_model(model, tmp_path / "sm", signatures=("serving_default",))
    loaded = tf.saved_model.load(str(tmp_path / "sm"))
    class_ids = loaded.signatures["serving_default"](images=tf.constant(image))["class_ids"]
    top2 = np.sort(logits, axis=-1)[..., -2:]
    decided = top2[..., 1] - top2[..., 0] > 1e-4
    np.testing.assert_array_equal(class_ids.numpy()[decided], logits.argmax(-1)[decided])

    runner = TFLiteSegmenter(convert_to_tflite(model, input_size=(SIZE, SIZE)))
    np.testing.assert_allclose(runner.logits(image), logits, atol=1e-3, rtol=1e-3)
