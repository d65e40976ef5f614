"""Evaluation: streaming confusion matrix, the inference path, trimap bands, reports."""

from keras_fusionseg.evaluation.boundary import band_confusions, trimap_band  # noqa: F401
from keras_fusionseg.evaluation.confusion import (  # noqa: F401
    ConfusionMatrixMetric,
    confusion_from_labels,
    iou_from_confusion,
)
from keras_fusionseg.evaluation.evaluator import evaluate, write_reports  # noqa: F401
from keras_fusionseg.evaluation.inference import SegmentationPipeline  # noqa: F401
