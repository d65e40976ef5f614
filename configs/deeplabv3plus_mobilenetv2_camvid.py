r"""The CamVid baseline under its preset's name: `configs/camvid.py` without a variant.

    python scripts/train.py --config=configs/deeplabv3plus_mobilenetv2_camvid.py \
        --config.data.data_dir=../shared/data/camvid --workdir=runs/camvid

The preset `deeplabv3plus_mobilenetv2_camvid` was trained with this file (its metadata.json
keeps the file's text of then); README and `scripts/make_preset.py` name it. The recipe and its
reasons are in `configs/camvid.py`.
"""

import os
import runpy


def get_config():
    camvid = os.path.join(os.path.dirname(os.path.abspath(__file__)), "camvid.py")
    return runpy.run_path(camvid)["get_config"]()
