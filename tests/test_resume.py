"""Kill -9 a training run in the middle of an epoch; the same command resumes from its backup."""

import json
import signal
import time

import pytest
import training_subprocess as sub

FLAGS = [
    "--config.train.epochs=2",
    "--config.train.steps_per_epoch=20",
    "--config.train.backup_every_steps=2",
    "--config.train.validation_every_epochs=2",
]


@pytest.mark.slow
def test_resume_after_kill(tmp_path):
    workdir = tmp_path / "run"
    metadata = workdir / "backup" / "training_metadata.json"
    first = sub.start([f"--workdir={workdir}", *FLAGS], log=tmp_path / "first.log")
    deadline = time.time() + 600
    state = None
    while time.time() < deadline and first.poll() is None:
        try:
            state = json.loads(metadata.read_text())
        except (OSError, ValueError):
            state = None
        if state and state["epoch"] == 0 and state["batch"] >= 5:  # mid-epoch 1 of 2
            first.send_signal(signal.SIGKILL)
            break
        time.sleep(0.2)
    first.wait(timeout=30)
    assert first.returncode == -signal.SIGKILL, (tmp_path / "first.log").read_text()[-3000:]
    assert state is not None and state["batch"] >= 5

    second = sub.start([f"--workdir={workdir}", *FLAGS])
    output, _ = second.communicate(timeout=600)
    assert second.returncode == 0, output[-3000:]
    assert "Resuming from backup" in output and "epoch 1, batch" in output
    metrics = json.loads((workdir / "metrics.json").read_text())
    assert metrics["resumed_from"]["epoch"] == 1 and metrics["resumed_from"]["batch"] >= 5
    # Weights, optimizer state and step counter came back: the rerun started at the backup's
    # step and stopped at the configured 40 steps in total.
    assert metrics["start_step"] >= 6
    assert metrics["train_steps"] == 40
