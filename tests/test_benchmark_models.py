"""scripts/benchmark_models.py at tiny sizes: JSON output, GFLOP/s arithmetic, interleaving."""

import json
import shutil
import statistics
import subprocess

import pytest
from absl import flags

from keras_fusionseg import models
from keras_fusionseg.export.benchmark import (
    achieved_gflops,
    cpu_model_name,
    interleaved_times,
)
from keras_fusionseg.utils import count_macs

TINY = "deeplabv3plus:mobilenetv2:16:separable=True:backbone.alpha=0.35"


def run(module, argv):
    flags.FLAGS.unparse_flags()
    flags.FLAGS(argv)
    module.main([])


@pytest.mark.slow  # runs the script (build, MAC count, timing)
def test_json_table_at_tiny_size(tmp_path, capsys, load_script):
    script = load_script("benchmark_models")
    out_file = tmp_path / "bench.json"
    run(
        script,
        [
            "x",
            f"--models={TINY}",
            "--input_size=32",
            "--num_classes=3",
            "--warmup=1",
            "--runs=3",
            "--peak_matmul_size=64",
            "--fold_batch_norm=both",
            f"--json_out={out_file}",
        ],
    )
    printed = capsys.readouterr().out
    result = json.loads(out_file.read_text())
    assert result["settings"]["runs"] == 3 and result["settings"]["input_size"] == [32, 32]
    assert result["machine"]["cpu_model"] == cpu_model_name()
    assert result["machine"]["cpu_model"] in printed
    assert [row["path"] for row in result["rows"]] == ["as built", "BN folded"]

    # Peak: 2 * n^3 FLOPs per matmul over the median matmul time, recomputed here.
    peak = result["peak"]
    assert len(peak["times_s"]) == 3
    want_peak = 2 * 64**3 / statistics.median(peak["times_s"]) / 1e9
    assert peak["gflops_median"] == pytest.approx(want_peak, rel=1e-9)
    assert peak["gflops_max"] == pytest.approx(2 * 64**3 / min(peak["times_s"]) / 1e9)

    model = models.build(
        "deeplabv3plus",
        num_classes=3,
        input_shape=(32, 32, 3),
        backbone="mobilenetv2",
        output_stride=16,
        backbone_options={"alpha": 0.35},
        separable=True,
    )
    macs = count_macs(model, (32, 32))
    for row in result["rows"]:
        assert row["backbone"] == "mobilenetv2" and row["output_stride"] == 16
        assert row["macs"] == macs
        assert len(row["times_s"]) == 3
        images_per_second = 1 / statistics.median(row["times_s"])
        assert row["images_per_second"] == pytest.approx(images_per_second, rel=1e-9)
        p10 = sorted(row["times_s"])[0] + 0.2 * (
            sorted(row["times_s"])[1] - sorted(row["times_s"])[0]
        )
        assert row["ms_per_image_p10"] == pytest.approx(p10 * 1e3, rel=1e-9)
        gflops = 2 * macs * images_per_second / 1e9
        assert row["gflops"] == pytest.approx(gflops, rel=1e-9)
        assert row["peak_share"] == pytest.approx(gflops / want_peak, rel=1e-9)
        assert f"| {row['gflops']:.1f} | {100 * row['peak_share']:.1f} |" in printed
    assert "| ms p10 |" in printed


@pytest.mark.slow
def test_no_peak_and_no_macs(tmp_path, load_script):
    script = load_script("benchmark_models")
    out_file = tmp_path / "bench.json"
    run(
        script,
        [
            "x",
            f"--models={TINY}",
            "--input_size=32",
            "--num_classes=3",
            "--warmup=0",
            "--runs=1",
            "--peak_matmul_size=0",
            "--nocount_macs",
            f"--json_out={out_file}",
        ],
    )
    result = json.loads(out_file.read_text())
    assert result["peak"] is None
    (row,) = result["rows"]
    assert row["macs"] is None and row["gflops"] is None and row["peak_share"] is None


def test_achieved_gflops():
    assert achieved_gflops(1.5e9, 2.0) == pytest.approx(6.0)
    assert achieved_gflops(27.41e9, 0.44) == pytest.approx(24.1208)


def test_rounds_are_interleaved_and_rotate():
    calls = []
    runners = [lambda i=i: calls.append(i) for i in range(3)]
    times = interleaved_times(runners, 4)
    assert [len(t) for t in times] == [4, 4, 4]
    rounds = [calls[i : i + 3] for i in range(0, 12, 3)]
    assert all(sorted(r) == [0, 1, 2] for r in rounds)
    assert [r[0] for r in rounds] == [0, 1, 2, 0]


@pytest.mark.skipif(shutil.which("lscpu") is None, reason="no lscpu")
def test_cpu_model_name_is_lscpu_model_name():
    text = subprocess.run(["lscpu"], capture_output=True, text=True, check=True).stdout
    names = [
        line.split(":", 1)[1].strip()
        for line in text.splitlines()
        if line.startswith("Model name:")
    ]
    assert cpu_model_name() == names[0]
