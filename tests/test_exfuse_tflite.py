"""`dunet`, `gcn` and `exfuse` (tiny) convert to TFLite with the same logits."""

import numpy as np
import pytest

from keras_fusionseg import models
from keras_fusionseg.export.tflite import TFLiteSegmenter, convert_to_tflite


@pytest.mark.parametrize("name", ["dunet", "exfuse"])
def test_converts_to_tflite(name, rng):
    model = models.build(name, num_classes=3, **models.get_model_spec(name).tiny)
    segmenter = TFLiteSegmenter(convert_to_tflite(model, input_size=(64, 64)))
    image = rng.uniform(0, 255, size=(64, 64, 3)).astype("float32")
    logits = np.asarray(segmenter.logits(image)).reshape(64, 64, 3)
    np.testing.assert_allclose(logits, model(image[None])[0], atol=1e-4)
