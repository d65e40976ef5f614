"""Parameter and multiply-add counting against hand counts; the counting scripts."""

import pathlib
import subprocess
import sys

import keras
import pytest

from keras_fusionseg.utils import count_macs, count_parameters, macs_by_op_type
from keras_fusionseg.utils.cli_options import (
    parse_input_size,
    parse_key_values,
    parse_model_spec,
    split_top_level,
)


def tiny_conv_net(input_shape=(None, None, 3)):
    inputs = keras.Input(input_shape)
    x = keras.layers.Conv2D(4, 3, padding="same", use_bias=False)(inputs)
    x = keras.layers.BatchNormalization()(x)
    x = keras.layers.ReLU()(x)
    x = keras.layers.Conv2D(6, 3, strides=2, padding="valid")(x)
    x = keras.layers.DepthwiseConv2D(3, padding="same", dilation_rate=2, use_bias=False)(x)
    x = keras.layers.Conv2D(5, 3, padding="same", dilation_rate=3)(x)
    x = keras.layers.GlobalAveragePooling2D()(x)
    outputs = keras.layers.Dense(7)(x)
    return keras.Model(inputs, outputs)


def hand_count(h, w):
    """MACs of `tiny_conv_net` on an h x w image: output pixels x kernel x in x out."""
    h2, w2 = (h - 3) // 2 + 1, (w - 3) // 2 + 1
    conv = h * w * 9 * 3 * 4
    strided = h2 * w2 * 9 * 4 * 6
    depthwise = h2 * w2 * 9 * 6
    dilated = h2 * w2 * 9 * 6 * 5
    dense = 5 * 7
    return {"Conv2D": conv + strided + dilated, "DepthwiseConv2dNative": depthwise, "MatMul": dense}


@pytest.mark.parametrize("size", [(16, 16), (19, 23)])
def test_count_macs_matches_hand_count(size):
    model = tiny_conv_net()
    assert macs_by_op_type(model, size) == hand_count(*size)
    assert count_macs(model, size) == sum(hand_count(*size).values())


def test_count_macs_can_include_space_to_batch_padding():
    model = tiny_conv_net()
    # 19x23 -> 9x11 after the strided conv: rate 2 pads to 10x12, rate 3 to 9x12.
    padded = count_macs(model, (19, 23), count_dilation_padding=True)
    expected = sum(hand_count(19, 23).values()) + (10 * 12 - 99) * 9 * 6 + (9 * 12 - 99) * 9 * 30
    assert padded == expected


def test_count_macs_scales_with_batch():
    model = tiny_conv_net()
    assert count_macs(model, 16, batch_size=3) == 3 * count_macs(model, 16)


def test_count_parameters_splits_trainable_and_moving_statistics():
    counts = count_parameters(tiny_conv_net())
    trainable = 27 * 4 + 2 * 4 + (36 * 6 + 6) + 9 * 6 + (54 * 5 + 5) + (5 * 7 + 7)
    assert counts == {"trainable": trainable, "non_trainable": 2 * 4, "total": trainable + 8}


@pytest.mark.parametrize("size", [0, (16,), (16, "a"), 16.0])
def test_count_macs_bad_input_size(size):
    with pytest.raises(ValueError, match="input_size"):
        count_macs(tiny_conv_net(), size)


def test_count_macs_fixed_input_size_mismatch():
    with pytest.raises(ValueError, match="fixed input height"):
        count_macs(tiny_conv_net((16, 16, 3)), (32, 16))


# ---------------------------------------------------------------- script options and scripts


def test_parse_key_values_and_sizes():
    assert parse_key_values("a=(1, 2),b=True,c=resnet50, d = 0.5") == {
        "a": (1, 2),
        "b": True,
        "c": "resnet50",
        "d": 0.5,
    }
    assert parse_key_values("") == {}
    assert parse_input_size("513") == (513, 513)
    assert parse_input_size("512,1024") == parse_input_size("512x1024") == (512, 1024)
    with pytest.raises(ValueError, match="--options"):
        parse_key_values("oops", "--options")
    with pytest.raises(ValueError, match="input size"):
        parse_input_size("0")


def test_parse_model_spec():
    spec = parse_model_spec("deeplabv3plus:mobilenetv2:8:backbone.alpha=0.35:aspp_rates=(1, 2)")
    assert spec == {
        "name": "deeplabv3plus",
        "backbone": "mobilenetv2",
        "output_stride": 8,
        "backbone_options": {"alpha": 0.35},
        "options": {"aspp_rates": (1, 2)},
    }
    assert parse_model_spec("deeplabv3")["backbone"] is None
    assert split_top_level("a:b:x=(1,2),c:d", ",") == ["a:b:x=(1,2)", "c:d"]
    with pytest.raises(ValueError, match="output stride"):
        parse_model_spec("deeplabv3:resnet50:sixteen")


def run_script(name, *flags):
    root = pathlib.Path(__file__).resolve().parents[1]
    result = subprocess.run(
        [sys.executable, str(root / "scripts" / name), *flags],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=root,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return result.stdout


TINY_SPEC = "deeplabv3plus:mobilenetv2:16:backbone.alpha=0.35:aspp_filters=8:decoder_filters=8"


@pytest.mark.slow
def test_benchmark_script_prints_a_table():
    table = run_script(
        "benchmark_models.py",
        f"--models={TINY_SPEC}:low_level_filters=4",
        "--input_size=32",
        "--warmup=1",
        "--runs=1",
        "--num_classes=3",
    )
    rows = [line for line in table.splitlines() if line.startswith("| deeplabv3plus")]
    assert len(rows) == 1 and "| mobilenetv2 | 16 |" in rows[0], table


@pytest.mark.slow
def test_model_info_script_prints_counts():
    info = run_script(
        "model_info.py",
        "--model=deeplabv3",
        "--backbone=mobilenetv2",
        "--backbone_options=alpha=0.35",
        "--options=aspp_filters=8",
        "--input_size=32",
        "--num_classes=3",
    )
    assert "parameters:" in info and "MACs total:" in info, info
