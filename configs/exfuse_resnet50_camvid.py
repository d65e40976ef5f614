"""ExFuse on GCN (ResNet-50, all components; SS losses 0.4 in all, ECRE loss 0.4) on CamVid.

Same data and schedule as `deeplabv3plus_mobilenetv2_camvid.py`; sized for an accelerator (a
ResNet-50 step at 256x352, batch 8, takes tens of seconds on a 2-core CPU).
"""

from configs.deeplabv3plus_mobilenetv2_camvid import get_config as camvid_config


def get_config():
    config = camvid_config()
    config.model.name = "exfuse"
    config.model.backbone = "resnet50"
    config.model.backbone_options = {}
    config.model.output_stride = 32
    config.model.aux_outputs = True
    config.model.options = {}
    config.train.weight_decay = 1e-4  # the papers' value for ResNet
    return config
