"""DUpsampling (ResNet-50 deep stem, OS16) on CamVid with a basis fitted on the train labels.

The model is the paper's default (Tian et al., CVPR 2019, Table 2's best and Fig. 2's light
decoder): "P1" is conv1_3 of the three-conv deep stem, fused with "P4" (b3u6c3).

Fit the basis first:

    python scripts/fit_dupsampling.py --source=camvid --data_dir=../shared/data/camvid \
        --ratio=16 --channels=64 --output=runs/camvid_dupsampling_r16.npz

Same data and schedule as `deeplabv3plus_mobilenetv2_camvid.py`; sized for an accelerator (a
ResNet-50 step at 256x352, batch 8, takes tens of seconds on a 2-core CPU).
"""

from configs.deeplabv3plus_mobilenetv2_camvid import get_config as camvid_config


def get_config():
    config = camvid_config()
    config.model.name = "dunet"
    config.model.backbone = "resnet50"
    config.model.backbone_options = {"deep_stem": True}  # conv1_3 exists only with the deep stem
    config.model.output_stride = 16
    config.model.aux_outputs = False
    config.model.options = {"dupsampling_basis": "runs/camvid_dupsampling_r16.npz"}
    config.train.weight_decay = 1e-4  # the papers' value for ResNet
    return config
