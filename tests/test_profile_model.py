"""scripts/profile_model.py: op-name scopes to layers, the percent arithmetic, and a real trace
of a tiny DeepLabv3+ (MobileNetV2 x0.35, 64x64) read back with xprof."""

import json

import pytest
from absl import flags

from keras_fusionseg.backbones.registry import build_backbone


def run(module, argv):
    flags.FLAGS.unparse_flags()
    flags.FLAGS(argv)
    module.main([])


def test_layer_of_maps_name_scopes_to_layers(load_script):
    script = load_script("profile_model")
    names = {"block_4_project", "conv1_1", "aspp"}
    # TF appends "_<n>" to repeated name scopes; a layer name may itself end in "_<n>".
    assert script.layer_of("m_1/block_4_project_1/convolution", "m", names) == "block_4_project"
    assert script.layer_of("m/conv1_1/convolution", "m", names) == "conv1_1"
    assert script.layer_of("m_2/conv1_1_3/convolution", "m", names) == "conv1_1"
    assert script.layer_of("m_1/aspp_1/pool_conv_1/convolution", "m", names) == "aspp"
    assert script.layer_of("m_1/concat", "m", names) == "m/concat"
    assert script.layer_of("Identity", "m", names) == script.OUTSIDE
    assert script.layer_of("other_1/aspp_1/x", "m", names) == script.OUTSIDE
    assert script.part_of("conv1_1", {"conv1_1"}) == "backbone"
    assert script.part_of("aspp", {"conv1_1"}) == "head"
    assert script.part_of(script.OUTSIDE, {"conv1_1"}) == script.OUTSIDE


def test_summarize_groups_and_percents(load_script):
    script = load_script("profile_model")

    def row(name, op_type, time_us):
        return {"operation": name, "type": op_type, "occurrences": 2, "self_time_us": time_us}

    rows = [
        row("m_1/stem_1/convolution", "Conv2D", 400.0),
        row("m_1/head_1/conv_1/convolution", "Conv2D", 200.0),
        row("m_1/head_1/resize/ResizeBilinear", "ResizeBilinear", 100.0),
        row("m_1/stem_bn_1/batchnorm/mul", "Mul", 50.0),
        row("Identity", "Identity", 50.0),
    ]
    # 200 us of op time beyond xprof's listed rows: 1000 us in all, 2 calls.
    summary = script.summarize(
        rows,
        1000.0,
        2,
        model_name="m",
        layer_names={"stem", "stem_bn", "head"},
        backbone_layers={"stem", "stem_bn"},
    )
    assert summary["total_op_ms_per_call"] == pytest.approx(0.5)

    def table(grouping):
        return {item["name"]: item["percent"] for item in summary[grouping]}

    unlisted = script.UNLISTED
    assert table("by_op_type") == pytest.approx(
        {"Conv2D": 60, "ResizeBilinear": 10, "Mul": 5, "Identity": 5, unlisted: 20}
    )
    assert table("by_part") == pytest.approx(
        {"backbone": 45, "head": 30, script.OUTSIDE: 5, unlisted: 20}
    )
    assert table("by_layer") == pytest.approx(
        {"stem": 40, "head": 30, "stem_bn": 5, script.OUTSIDE: 5, unlisted: 20}
    )
    assert [item["percent"] for item in summary["by_op_type"]] == sorted(
        table("by_op_type").values(), reverse=True
    )
    top = summary["top_ops"][0]
    assert (top["name"], top["type"], top["layer"]) == ("m_1/stem_1/convolution", "Conv2D", "stem")
    assert top["ms_per_call"] == pytest.approx(0.2) and top["percent"] == pytest.approx(40)

    # Nothing unlisted: no such entry, and the listed rows alone make 100 %.
    summary = script.summarize(
        rows, 800.0, 1, model_name="m", layer_names=set(), backbone_layers=None
    )
    assert unlisted not in table("by_op_type")
    assert sum(table("by_part").values()) == pytest.approx(100)
    assert set(table("by_part")) == {"(unknown: no build arguments)", script.OUTSIDE}


@pytest.mark.slow  # builds a model, traces it under the profiler and converts with xprof
def test_tiny_model_trace_summary(tmp_path, capsys, load_script):
    pytest.importorskip("xprof")
    script = load_script("profile_model")
    out_file = tmp_path / "profile.json"
    run(
        script,
        [
            "x",
            "--model=deeplabv3plus",
            "--backbone=mobilenetv2",
            "--backbone_options=alpha=0.35",
            "--output_stride=16",
            "--num_classes=3",
            "--size=64x64",
            "--warmup=1",
            "--calls=2",
            f"--logdir={tmp_path / 'trace'}",
            f"--json_out={out_file}",
        ],
    )
    printed = capsys.readouterr().out
    summary = json.loads(out_file.read_text())
    assert summary["settings"]["calls"] == 2 and summary["settings"]["size"] == [64, 64]
    assert summary["settings"]["xplane"][0].startswith(str(tmp_path / "trace"))

    for grouping in ("by_op_type", "by_part", "by_layer"):
        percents = [item["percent"] for item in summary[grouping]]
        assert sum(percents) == pytest.approx(100, abs=1e-6), grouping
        assert percents == sorted(percents, reverse=True), grouping
        times = sum(item["ms_per_call"] for item in summary[grouping])
        assert times == pytest.approx(summary["total_op_ms_per_call"], rel=1e-6), grouping
    unlisted = {item["name"]: item["percent"] for item in summary["by_op_type"]}.get(
        script.UNLISTED, 0.0
    )
    assert sum(item["percent"] for item in summary["top_ops"]) + unlisted == pytest.approx(100)

    # The convs, by their TF names with oneDNN off (Conv2D, _FusedConv2D, ...) or on
    # (_MklNativeConv2D, _MklNativeFusedConv2D, ...): the bulk of this model's op time.
    op_types = {item["name"]: item["percent"] for item in summary["by_op_type"]}
    convs = {name for name in op_types if "Conv2D" in name}
    depthwise = {name for name in op_types if "DepthwiseConv2dNative" in name}
    assert convs - depthwise and depthwise, sorted(op_types)
    assert sum(op_types[name] for name in convs) > 30, op_types
    assert "| _" in printed or "| Conv2D |" in printed

    # Backbone / head: the backbone's layers are the MobileNetV2 built with the same options.
    backbone = {
        layer.name
        for layer in build_backbone(
            "mobilenetv2", input_shape=(64, 64, 3), output_stride=16, alpha=0.35
        ).layers
    }
    parts = {item["name"]: item["ms_per_call"] for item in summary["by_part"]}
    assert parts["backbone"] > 0 and parts["head"] > 0, parts
    layers = {item["name"]: item["ms_per_call"] for item in summary["by_layer"]}
    assert {"aspp", "decoder"} <= set(layers) and "block_16_project" in layers, sorted(layers)
    in_backbone = sum(time for name, time in layers.items() if name in backbone)
    assert in_backbone == pytest.approx(parts["backbone"], rel=1e-9)
    assert "Op time per model part" in printed and "| backbone |" in printed
