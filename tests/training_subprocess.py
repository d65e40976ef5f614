"""Runs scripts/train.py in a fresh Python process with the tiny test backbone registered.

Used by the strategy and resume tests: logical CPU devices and TF_CONFIG must be set up
before TensorFlow initialises, and a run must be killable.
"""

import os
import pathlib
import socket
import subprocess
import sys

TESTS = pathlib.Path(__file__).resolve().parent
REPO = TESTS.parent

DRIVER = f"""
import os, runpy, sys
sys.path.insert(0, {str(TESTS)!r})
import training_tiny_backbone  # registers "tiny_test_backbone"
sys.argv = ["train.py"] + sys.argv[1:]
runpy.run_path({str(REPO / "scripts" / "train.py")!r}, run_name="__main__")
"""

TINY_FLAGS = [
    f"--config={REPO / 'configs' / 'smoke.py'}",
    "--config.model.backbone=tiny_test_backbone",
    "--config.train.num_overlay_images=0",
    "--config.eval.max_images=2",
]


def environment(tf_config=None):
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", PYTHONUNBUFFERED="1")
    env.pop("TF_CONFIG", None)
    if tf_config is not None:
        env["TF_CONFIG"] = tf_config
    return env


def start(flags, tf_config=None, log=None):
    """Starts the training script; stdout+stderr go to `log` (a path) or a pipe."""
    out = open(log, "w") if log else subprocess.PIPE  # noqa: SIM115
    return subprocess.Popen(
        [sys.executable, "-c", DRIVER, *TINY_FLAGS, *flags],
        stdout=out,
        stderr=subprocess.STDOUT,
        env=environment(tf_config),
        cwd=str(REPO),
        text=True,
    )


def free_ports(count):
    sockets = [socket.socket() for _ in range(count)]
    for s in sockets:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in sockets]
    for s in sockets:
        s.close()
    return ports
