"""Training: losses, optimizers, strategies, config validation and the `fit` loop."""

from keras_fusionseg.training.config import default_config, validate_config  # noqa: F401
from keras_fusionseg.training.losses import (  # noqa: F401
    PresenceCrossEntropy,
    SegmentationCrossEntropy,
    losses_from_loss_spec,
)
from keras_fusionseg.training.optimizers import PolyDecay, SGDWithL2, build_optimizer  # noqa: F401
from keras_fusionseg.training.strategies import distributed_fit_fix, make_strategy  # noqa: F401
from keras_fusionseg.training.trainer import train  # noqa: F401
