"""DeepLabv3+ MobileNetV2 (x1.0, from scratch) on CamVid 11 classes: the ~60-minute CPU baseline.

    python scripts/train.py --config=configs/deeplabv3plus_mobilenetv2_camvid.py \
        --config.data.data_dir=../shared/data/camvid --workdir=runs/camvid

Recipe (reasons in README "Training and evaluation"):
- MobileNetV2 x1.0 at output stride 16, with the paper's atrous *separable* convs in ASPP
  and decoder (DeepLabv3+ Sec. 3.2), 128 channels wide instead of the paper's 256: on a
  2-core CPU a step takes 2.35 s instead of 3.17 s (batch 8, 256x352), so the same 60
  minutes train 1.35x more steps, which a from-scratch run needs more than head width.
- 256x352 crops, batch 8, SGD momentum 0.9, poly (power 0.9) from 0.05 after a 100-step
  warm-up: random initialisation with BN tolerates a high rate, and a short budget needs it.
- L2 weight decay 4e-5 on kernels (the DeepLab value for MobileNet).
- Class weights: square roots of median-frequency weights from the train split's pixel
  shares (classes.txt order), so thin classes (pole, sign, pedestrian, bicyclist) get
  gradient without letting them dominate.
"""

from keras_fusionseg.training.config import default_config

# Train-split pixel shares (%) per class, from the dataset's SOURCE.md histogram.
TRAIN_PIXEL_SHARES = (16.85, 23.26, 0.98, 31.66, 4.49, 9.72, 1.17, 1.13, 5.87, 0.64, 0.29)


def sqrt_median_frequency_weights(shares):
    ordered = sorted(shares)
    median = ordered[len(ordered) // 2]
    return tuple(round((median / share) ** 0.5, 4) for share in shares)


def get_config():
    config = default_config()
    config.model.name = "deeplabv3plus"
    config.model.backbone = "mobilenetv2"
    config.model.backbone_options = {"alpha": 1.0}
    config.model.output_stride = 16
    config.model.options = {
        "aspp_filters": 128,
        "decoder_filters": 128,
        "low_level_filters": 48,
        "separable": True,
    }
    config.data.name = "camvid"
    config.data.data_dir = "../shared/data/camvid"
    config.data.crop_size = (256, 352)
    config.data.batch_size = 8
    config.data.scale_range = (0.75, 1.5)
    config.data.shuffle_buffer = 128
    config.data.cache = True
    config.train.epochs = 26  # 1,196 steps: under 60 min on 2 AVX2 cores (README)
    config.train.steps_per_epoch = 46  # 367 images / 8
    config.train.optimizer = "sgd"
    config.train.learning_rate = 0.05
    config.train.warmup_steps = 100
    config.train.weight_decay = 4e-5
    config.train.class_weights = sqrt_median_frequency_weights(TRAIN_PIXEL_SHARES)
    config.train.bn_momentum = 0.99  # the models' 0.9997 is for 30k+ step schedules
    config.train.bn_recalibration_batches = 20  # precise BN before validation
    config.train.backup_every_steps = 46
    config.train.validation_every_epochs = 5
    config.train.num_overlay_images = 3
    config.train.verbose = 1
    return config
