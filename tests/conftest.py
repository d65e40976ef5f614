"""Shared test settings: quiet TensorFlow, small shapes, paths to optional real data."""

import os
import pathlib

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402

SHARED_DATA = pathlib.Path(__file__).resolve().parents[2] / "shared" / "data"


@pytest.fixture(autouse=True)
def _seed_and_clear():
    keras.utils.set_random_seed(0)
    yield
    keras.backend.clear_session()


@pytest.fixture
def rng():
    return np.random.default_rng(0)


@pytest.fixture
def load_script():
    """`load_script(name)` imports scripts/<name>.py as a module; at teardown the absl flags it
    defined are removed, so tests in the same process can load scripts with the same flags."""
    import importlib.util

    from absl import flags

    before = set(flags.FLAGS)

    def load(name):
        path = pathlib.Path(__file__).resolve().parents[1] / "scripts" / f"{name}.py"
        spec = importlib.util.spec_from_file_location(f"script_{name}", path)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        return module

    yield load
    for name in set(flags.FLAGS) - before:
        delattr(flags.FLAGS, name)


def shared_dataset(name):
    """Path of a real dataset in ../shared/data, or skip the test when it is absent."""
    path = SHARED_DATA / name
    if not path.is_dir():
        pytest.skip(f"{path} not present")
    return path


# Test files that run dilated or depthwise convs, export, or training: CI runs them a second
# time with oneDNN on (`-m onednn`), after the whole suite with oneDNN off (.ci/run).
ONEDNN_LANE = {
    "test_backbones",
    "test_backbones_xception",
    "test_bfloat16_inference",
    "test_deeplab_layers",
    "test_deeplab_models",
    "test_dilated_convs",
    "test_exfuse_tflite",
    "test_export_all_models",
    "test_export_saved_model",
    "test_fastfcn_models",
    "test_fold_batch_norm",
    "test_layers_common",
    "test_layers_common_numpy",
    "test_layers_registered",
    "test_models_registry",
    "test_onnx",
    "test_predict",
    "test_profile_model",
    "test_presets",
    "test_pspnet_model",
    "test_resume",
    "test_serve",
    "test_shipped_accuracy",
    "test_strategies",
    "test_tflite",
    "test_training",
    "test_training_batch_norm",
    "test_training_configs",
    "test_training_runs",
}


def pytest_collection_modifyitems(config, items):
    for item in items:
        if item.path.stem in ONEDNN_LANE:
            item.add_marker(pytest.mark.onednn)


# `slow`: a test that takes more than SLOW_SECONDS on the 2-core CI machine. That is a test that
# builds a full-size architecture (parameter and multiply-add counts against the papers), runs
# `train()`, or starts a process (scripts, servers, multi-worker training); every other test uses
# tiny variants. `pytest -m "not slow"` is the quick local run; CI runs both (.ci/run). The
# terminal summary names unmarked tests that took longer, so a new slow test gets noticed.
SLOW_SECONDS = 10.0
_unmarked_slow = []


def pytest_runtest_logreport(report):
    if report.when == "call" and report.duration > SLOW_SECONDS and "slow" not in report.keywords:
        _unmarked_slow.append((report.duration, report.nodeid))


def pytest_terminal_summary(terminalreporter):
    if _unmarked_slow:
        terminalreporter.section(f"tests over {SLOW_SECONDS:.0f} s not marked slow")
        for duration, nodeid in sorted(_unmarked_slow, reverse=True):
            terminalreporter.write_line(f"{duration:7.1f}s  {nodeid}")
