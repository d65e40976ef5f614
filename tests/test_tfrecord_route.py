"""The README's route as a user runs it: a folder dataset -> scripts/create_tfrecords.py ->
scripts/train.py on the TFRecord glob -> scripts/evaluate.py, and the config checks of a
TFRecord `data.name`."""

import json
import os
import pathlib
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from keras_fusionseg.training import config as config_lib

REPO = pathlib.Path(__file__).resolve().parents[1]
NUM_CLASSES = 3


def _folder_dataset(root, rng):
    """Two splits of 64x64 images whose labels follow the image (left half / right half)."""
    for split, count in (("train", 4), ("val", 2)):
        for index in range(count):
            image = rng.integers(0, 256, (64, 64, 3), np.uint8)
            label = np.zeros((64, 64), np.uint8)
            label[:, 32:] = 1 + index % 2
            label[0, :4] = 255
            for kind, array in (("images", image), ("labels", label)):
                path = root / kind / split / f"{split}{index}.png"
                path.parent.mkdir(parents=True, exist_ok=True)
                Image.fromarray(array).save(path)
    (root / "classes.txt").write_text("background\nleft\nright\n")
    return root


# Runs a script as `python scripts/<script>` does, with the tiny test backbone registered
# (the pipeline is under test, not the architecture; the default backbone triples the time).
_DRIVER = f"""
import runpy, sys
sys.path.insert(0, {str(REPO / "tests")!r})
import training_tiny_backbone
script = sys.argv[1]
sys.argv = sys.argv[1:]
runpy.run_path(script, run_name="__main__")
"""


def _start(script, *flags):
    return subprocess.Popen(
        [sys.executable, "-c", _DRIVER, str(REPO / "scripts" / script), *flags],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=str(REPO),
        env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2"),
    )


def _finish(process):
    stdout, stderr = process.communicate(timeout=300)
    assert process.returncode == 0, f"{process.args[3:]}\n{stdout[-2000:]}{stderr[-3000:]}"
    return stdout


def _route_config(pattern):
    return [
        f"--config={REPO / 'configs' / 'smoke.py'}",
        f"--config.data.name={pattern}",
        f"--config.data.num_classes={NUM_CLASSES}",
        "--config.model.backbone=tiny_test_backbone",
        "--config.data.options={}",
        "--config.train.epochs=1",
        "--config.train.steps_per_epoch=2",
        "--config.train.num_overlay_images=0",
        "--config.train.verbose=0",
    ]


@pytest.mark.slow
def test_folder_to_tfrecords_to_train_to_evaluate(tmp_path, rng):
    root = _folder_dataset(tmp_path / "folder", rng)
    writers = [
        _start(
            "create_tfrecords.py",
            f"--source={root}",
            f"--split={split}",
            f"--output={tmp_path / 'records' / f'{split}.tfrecord'}",
            "--num_shards=2",
        )
        for split in ("train", "val")
    ]
    for writer in writers:
        _finish(writer)
    pattern = str(tmp_path / "records" / "{split}-*-of-*.tfrecord")
    workdir = tmp_path / "run"
    flags = _route_config(pattern)
    _finish(_start("train.py", *flags, f"--workdir={workdir}"))
    trained = json.loads((workdir / "metrics.json").read_text())
    assert trained["num_images"] == 2 and trained["train_steps"] == 2
    output = _finish(_start("evaluate.py", *flags, f"--workdir={workdir}"))
    evaluated = json.loads((workdir / "eval_whole" / "metrics.json").read_text())
    assert evaluated["num_images"] == 2 and "mIoU" in output
    assert evaluated["mean_iou"] == pytest.approx(trained["mean_iou"], abs=1e-6)


def _config(name, **data_fields):
    config = config_lib.default_config()
    config.data.name = name
    for key, value in data_fields.items():
        setattr(config.data, key, value)
    return config


def test_tfrecord_data_name_is_checked_before_building(tmp_path):
    (tmp_path / "train-00000-of-00001.tfrecord").write_bytes(b"")
    pattern = str(tmp_path / "{split}-*.tfrecord")
    with pytest.raises(ValueError) as caught:
        config_lib.validate_config(_config(pattern))
    message = str(caught.value)
    assert "no TFRecord files match" in message and "val-*.tfrecord" in message
    assert "train-*.tfrecord" not in message
    assert "data.num_classes (or data.class_names) is required" in message
    with pytest.raises(ValueError, match=r"only placeholder allowed is \{split\}"):
        config_lib.validate_config(_config(str(tmp_path / "{part}-*.tfrecord"), num_classes=2))
    (tmp_path / "val-00000-of-00001.tfrecord").write_bytes(b"")
    config_lib.validate_config(_config(pattern, num_classes=2))
    config_lib.validate_config(_config(pattern, class_names=("a", "b")))
    with pytest.raises(ValueError, match="2 class names for 3 classes"):
        config_lib.validate_config(_config(pattern, num_classes=3, class_names=("a", "b")))
    with pytest.raises(ValueError, match="differs from dataset 'synthetic_shapes'"):
        config_lib.validate_config(_config("synthetic_shapes", num_classes=2))


@pytest.mark.parametrize("flag", ["--strategy=mirrored", "--mixed_precision=mixed_float16"])
def test_evaluate_script_refuses_training_only_flags(flag, tmp_path):
    # evaluate.py used to accept these and ignore them; it evaluates on one device in the
    # checkpoint's own dtype policy, so it now refuses them by name.
    process = subprocess.run(
        [sys.executable, str(REPO / "scripts" / "evaluate.py"), flag, "--checkpoint=none.keras"],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=str(tmp_path),
        env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2"),
    )
    name = flag[2:].split("=")[0]
    assert process.returncode != 0
    assert f"Unknown command line flag '{name}'" in process.stderr, process.stderr[-2000:]
