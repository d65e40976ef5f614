"""Script-level bad input: predict.py skips and reports bad files, evaluate.py refuses a checkpoint
whose class count differs from the config."""

import os
import pathlib
import subprocess
import sys

import numpy as np
import pytest
from export_helpers import tiny_segmenter
from PIL import Image

ROOT = pathlib.Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_predict_script_skips_reports_and_fails_at_the_end(tmp_path):
    tiny_segmenter(num_classes=3).save(tmp_path / "model.keras")
    images = tmp_path / "images"
    images.mkdir()
    rng = np.random.default_rng(0)
    for name in ("a.png", "c.png"):
        Image.fromarray(rng.integers(0, 256, (20, 24, 3), np.uint8)).save(images / name)
    (images / "b.png").write_bytes(b"\x89PNG\r\n\x1a\n damaged")  # sorted between the good ones
    (images / "d.jpg").write_bytes(b"")
    command = [
        sys.executable,
        str(ROOT / "scripts" / "predict.py"),
        f"--model={tmp_path / 'model.keras'}",
        f"--inputs={images}",
        f"--output_dir={tmp_path / 'out'}",
        "--num_classes=3",
    ]
    run = subprocess.run(command, capture_output=True, text=True, timeout=300, env=os.environ)
    assert run.returncode == 1, run.stderr[-2000:]
    assert "2 of 4 files failed" in run.stderr
    assert "b.png" in run.stderr and "d.jpg" in run.stderr
    assert sorted(os.listdir(tmp_path / "out")) == [
        "a_label.png",
        "a_overlay.png",
        "c_label.png",
        "c_overlay.png",
    ]
    stop = subprocess.run(
        [*command, "--noskip_errors", f"--output_dir={tmp_path / 'out2'}"],
        capture_output=True,
        text=True,
        timeout=300,
        env=os.environ,
    )
    assert stop.returncode != 0 and "b.png" in stop.stderr
    assert sorted(os.listdir(tmp_path / "out2")) == ["a_label.png", "a_overlay.png"]


@pytest.mark.slow
def test_evaluate_refuses_checkpoint_with_other_class_count(tmp_path):
    tiny_segmenter(num_classes=3).save(tmp_path / "model.keras")  # synthetic_shapes has 6
    run = subprocess.run(
        [
            sys.executable,
            str(ROOT / "scripts" / "evaluate.py"),
            f"--config={ROOT / 'configs' / 'smoke.py'}",
            f"--checkpoint={tmp_path / 'model.keras'}",
            f"--workdir={tmp_path}",
        ],
        capture_output=True,
        text=True,
        timeout=300,
        env=os.environ,
    )
    assert run.returncode != 0
    assert "predicts 3 classes but the config's dataset 'synthetic_shapes' has 6" in run.stderr
    assert not (tmp_path / "eval_whole" / "metrics.json").exists()
