"""Shipping a trained model: SavedModel with raw-image signatures, TFLite, ONNX, predict, serve.

Every form runs `SegmentationPipeline` (`evaluation.inference`), the inference path that
`evaluate.py` scores.
"""

from keras_fusionseg.evaluation.inference import SegmentationPipeline  # noqa: F401
from keras_fusionseg.export.onnx import export_onnx  # noqa: F401  (tf2onnx imported on use)
from keras_fusionseg.export.predictor import load_segmenter  # noqa: F401
from keras_fusionseg.export.saved_model import (  # noqa: F401
    SIZE_POLICIES,
    export_saved_model,
    find_keras_file,
    fold_batch_norm_if_functional,
    load_keras_model,
)
from keras_fusionseg.export.tflite import (  # noqa: F401
    QUANTIZATIONS,
    TFLiteSegmenter,
    convert_to_tflite,
    representative_images,
)
