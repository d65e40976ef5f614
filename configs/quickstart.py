"""Quick start: a narrow DeepLabv3+ (MobileNetV2 x0.35) on the built-in synthetic_shapes data."""

from keras_fusionseg.training.config import default_config


def get_config():
    config = default_config()
    config.model.name = "deeplabv3plus"
    config.model.backbone = "mobilenetv2"
    config.model.backbone_options = {"alpha": 0.35}
    config.model.output_stride = 16
    config.model.options = {"aspp_filters": 64, "decoder_filters": 64, "low_level_filters": 24}
    config.data.name = "synthetic_shapes"
    config.data.crop_size = (96, 96)
    config.data.batch_size = 8
    # synthetic_shapes already draws object sizes over a 2.3x range and random saturation,
    # brightness and backgrounds, and each class has its own hue band: scale and colour
    # augmentation add nothing the data lacks and blur the hue cue. Measured on a 2-core Zen 4
    # (README Quick start): with both, 16 epochs reach val mIoU 0.714; without, 0.769.
    config.data.scale_range = (1.0, 1.0)
    config.data.color_jitter = False
    config.train.epochs = 16
    config.train.steps_per_epoch = 80
    # AdamW beats SGD (0.05, momentum 0.9) here: paired runs on a 2-core Intel Xeon (README
    # Quick start) 0.792 vs 0.756 (seed 0) and 0.760 vs 0.737 (seed 1).
    config.train.optimizer = "adamw"
    config.train.learning_rate = 4e-3
    config.train.weight_decay = 1e-2  # decoupled; BN, biases and depthwise kernels excluded
    config.train.warmup_steps = 20
    config.train.bn_momentum = 0.99  # the models' 0.9997 is for 30k+ step schedules
    config.train.bn_recalibration_batches = 25  # precise BN before validation (200 crops)
    config.train.backup_every_steps = 80
    config.train.validation_every_epochs = 2
    return config
