"""Real `fit` runs of a tiny model under one_device, mirrored (2 logical CPUs, in a
subprocess) and multi_worker (two worker processes on 127.0.0.1, RING collectives)."""

import json

import pytest
import tensorflow as tf
import training_subprocess as sub

from keras_fusionseg.training import strategies

TIMEOUT = 600  # generous: the machine may be shared; ~1 min when idle


def test_make_strategy_names():
    # One device: TensorFlow's default strategy (a OneDeviceStrategy wraps every step).
    assert strategies.make_strategy("auto") is tf.distribute.get_strategy()
    assert isinstance(strategies.make_strategy("one_device"), tf.distribute.OneDeviceStrategy)
    with pytest.raises(ValueError, match="`strategy` must be one of .* received 'gpu_cluster'"):
        strategies.make_strategy("gpu_cluster")


def test_multi_replica_fix_refuses_an_untested_keras(monkeypatch):
    import types

    import keras

    mirrored = types.SimpleNamespace(num_replicas_in_sync=2)  # what the fix reads
    monkeypatch.setattr(keras, "__version__", "3.99.0")
    with pytest.raises(
        RuntimeError, match=r"tested with Keras 3\.15\.x only, this is Keras 3\.99\.0"
    ):
        with strategies.distributed_fit_fix(mirrored):
            pass
    monkeypatch.setattr(keras, "__version__", "3.15.9")
    with strategies.distributed_fit_fix(mirrored):
        pass  # the tested release enters the patch


def _finish(process, name):
    try:
        output, _ = process.communicate(timeout=TIMEOUT)
    except subprocess_timeout():
        process.kill()
        output, _ = process.communicate()
        pytest.fail(f"{name} did not finish in {TIMEOUT} s:\n{output[-3000:]}")
    assert process.returncode == 0, f"{name} failed:\n{output[-3000:]}"
    return output


def subprocess_timeout():
    import subprocess

    return subprocess.TimeoutExpired


@pytest.mark.slow
def test_mirrored_on_two_logical_cpus_with_sync_batch_norm(tmp_path):
    process = sub.start(
        [
            f"--workdir={tmp_path}",
            "--strategy=mirrored",
            "--cpu_devices=2",
            "--config.train.sync_batch_norm=True",
        ]
    )
    output = _finish(process, "mirrored run")
    assert "MirroredStrategy: 2 replica(s)" in output
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert metrics["train_steps"] == 6 and metrics["num_images"] == 2


@pytest.mark.slow
def test_multi_worker_two_processes(tmp_path):
    ports = sub.free_ports(2)
    cluster = {"worker": [f"127.0.0.1:{port}" for port in ports]}
    workers = [
        sub.start(
            [f"--workdir={tmp_path}", "--strategy=multi_worker"],
            tf_config=json.dumps({"cluster": cluster, "task": {"type": "worker", "index": index}}),
        )
        for index in range(2)
    ]
    outputs = [_finish(worker, f"worker {i}") for i, worker in enumerate(workers)]
    for output in outputs:
        assert "CollectiveAllReduceStrategy: 2 replica(s)" in output  # MultiWorkerMirrored
    metrics = json.loads((tmp_path / "metrics.json").read_text())  # written by the chief only
    assert metrics["train_steps"] == 6
    losses = [line for line in outputs[0].splitlines() if "val_mean_iou" in line]
    assert len(losses) == 2  # both epochs ran validation through the patched reduction
