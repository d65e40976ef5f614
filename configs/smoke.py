"""Smoke test: the tiny DeepLabv3+ variant on 64x64 synthetic images, a few steps.

Used by the tests (strategies, resume) and to check an installation in seconds.
"""

from keras_fusionseg.training.config import default_config


def get_config():
    config = default_config()
    config.model.name = "deeplabv3plus"
    config.model.backbone = "mobilenetv2"
    config.model.backbone_options = {"alpha": 0.35}
    config.model.options = {"aspp_filters": 16, "decoder_filters": 16, "low_level_filters": 8}
    config.data.options = {"num_images": 8, "image_size": (64, 64)}
    config.data.crop_size = (64, 64)
    config.data.batch_size = 4
    config.data.shuffle_buffer = 8
    config.train.epochs = 2
    config.train.steps_per_epoch = 3
    config.train.bn_momentum = 0.9  # the models' 0.9997 is for 30k+ step schedules
    config.train.backup_every_steps = 1
    config.train.num_overlay_images = 2
    config.train.verbose = 2
    return config
