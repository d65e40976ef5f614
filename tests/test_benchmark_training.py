"""scripts/benchmark_training.py: each setting compiles the config's model as training does."""

import json

import keras
import pytest
from config_files import load_config


@pytest.mark.slow  # builds and compiles the tiny model twice
def test_settings_compile_with_xla_and_bfloat16(tmp_path, load_script):
    script = load_script("benchmark_training")
    config = load_config("smoke")
    plain, num_classes = script.compiled_model(config, "float32", False, str(tmp_path / "a"))
    xla, _ = script.compiled_model(config, "mixed_bfloat16", True, str(tmp_path / "b"))
    assert plain.jit_compile is False and xla.jit_compile is True
    assert plain.layers[-1].compute_dtype == "float32"
    conv_dtypes = {layer.compute_dtype for layer in xla.layers if "conv" in layer.name}
    assert conv_dtypes == {"bfloat16"}, conv_dtypes
    # The global policy is restored for the next setting.
    assert keras.config.dtype_policy().name == "float32"
    images, labels = script.random_batch(config, plain, num_classes)
    assert images.shape == (4, 64, 64, 3) and labels.shape == (4, 64, 64, 1)
    assert 0 < script.time_steps(plain, (images, labels), 2) < 60


def test_unknown_setting_is_refused(load_script):
    script = load_script("benchmark_training")
    with pytest.raises(Exception, match=r"unknown \['fp8'\]"):
        script.check_settings(["float32", "fp8"])


@pytest.mark.slow  # two settings, one round of two steps each
def test_writes_a_json_row_per_setting(tmp_path, load_script):
    script = load_script("benchmark_training")
    out = tmp_path / "training.json"
    argv = [
        "x",
        f"--config={script.REPO}/configs/smoke.py",
        "--settings=float32,one_device",
        "--input_batches=2",
        "--steps=2",
        "--warmup=1",
        "--rounds=1",
        f"--json_out={out}",
    ]
    script.flags.FLAGS(argv)
    script.main([argv[0]])
    result = json.loads(out.read_text())
    rows = result["rows"]
    pipeline = result["input_pipeline"]
    consumed = 4 / rows[0]["seconds_per_step"]
    assert pipeline["ratio_to_first_setting"] == pytest.approx(
        pipeline["images_per_second"] / consumed, rel=0.02
    )
    assert [row["setting"] for row in rows] == ["float32", "one_device"]
    for row in rows:
        assert row["images_per_second"] == pytest.approx(4 / row["seconds_per_step"], rel=0.01)
    assert rows[0]["speedup_vs_first"] == 1.0
