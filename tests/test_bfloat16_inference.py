"""Opt-in bfloat16 inference: native-bf16 detection, `to_bfloat16` and the `--precision` flag.

`native_bfloat16` runs on injected /proc/cpuinfo texts (and a fake sysctl), so every branch is
checked on any machine. `to_bfloat16` runs on a tiny DeepLabv3+ (MobileNetV2 x0.35, 64x64,
narrow heads) whose batch-norm statistics and affine weights are randomised, so that its
logits are not the near-constant ones of a fresh model.
"""

import keras
import numpy as np
import pytest
import tensorflow as tf
from helpers.batch_norm import randomise_batch_norms

from keras_fusionseg import models
from keras_fusionseg.export import optimize
from keras_fusionseg.export.optimize import (
    count_batch_norms,
    fold_batch_norm,
    resolve_inference_precision,
    to_bfloat16,
    with_precision,
)
from keras_fusionseg.export.predictor import load_segmenter
from keras_fusionseg.models.segmentation_model import SegmentationModel
from keras_fusionseg.utils import precision
from keras_fusionseg.utils.precision import native_bfloat16

SIZE = 64
CONVS = (keras.layers.Conv2D, keras.layers.DepthwiseConv2D, keras.layers.SeparableConv2D)

X86_FLAGS = "fpu vme de pse tsc msr pae mce cx8 apic sep avx avx2 fma avx512f avx512bw"
ZEN4_CPUINFO = (
    "processor\t: 0\nvendor_id\t: AuthenticAMD\nmodel name\t: AMD EPYC 9B14\n"
    f"flags\t\t: {X86_FLAGS} avx512_vnni avx512_bf16 avx512_vbmi2\n"
    f"bugs\t\t: sysret_ss_attrs\n\nprocessor\t: 1\nflags\t\t: {X86_FLAGS} avx512_bf16\n"
)
SAPPHIRE_RAPIDS_CPUINFO = f"processor\t: 0\nflags\t\t: {X86_FLAGS} amx_bf16 amx_tile amx_int8\n"
# An AVX-512 CPU without BF16 (Skylake-SP); "bf16" appears only in another line's text.
SKYLAKE_CPUINFO = f"processor\t: 0\nflags\t\t: {X86_FLAGS} avx512_vnni\nmodel name\t: bf16 lab\n"
GRAVITON3_CPUINFO = (
    "processor\t: 0\nBogoMIPS\t: 2100.00\n"
    "Features\t: fp asimd evtstrm aes pmull sha1 sha2 crc32 atomics sve i8mm bf16 svebf16\n"
    "CPU implementer\t: 0x41\n"
)
GRAVITON2_CPUINFO = (
    "processor\t: 0\nFeatures\t: fp asimd evtstrm aes pmull sha1 sha2 crc32 atomics\n"
)


def linux_x86(cpuinfo, onednn=True):
    return native_bfloat16(cpuinfo=cpuinfo, system="Linux", machine="x86_64", onednn=onednn)


# native_bfloat16


@pytest.mark.parametrize(
    "cpuinfo, flag", [(ZEN4_CPUINFO, "avx512_bf16"), (SAPPHIRE_RAPIDS_CPUINFO, "amx_bf16")]
)
def test_x86_with_bf16_flags_and_onednn_on_is_native(cpuinfo, flag):
    native, reason = linux_x86(cpuinfo)
    assert native is True
    assert flag in reason and "oneDNN is on" in reason


def test_x86_without_bf16_flags_is_not_native():
    native, reason = linux_x86(SKYLAKE_CPUINFO)
    assert native is False
    assert "avx512_bf16" in reason and "amx_bf16" in reason


def test_x86_bf16_with_onednn_off_is_not_native(monkeypatch):
    monkeypatch.setenv("TF_ENABLE_ONEDNN_OPTS", "0")
    native, reason = linux_x86(ZEN4_CPUINFO, onednn=False)
    assert native is False
    assert "oneDNN is off" in reason and "TF_ENABLE_ONEDNN_OPTS=0" in reason


def test_x86_bf16_with_onednn_unknown_is_not_native(monkeypatch):
    # onednn=None asks TensorFlow; when it cannot tell, the answer is "not native".
    monkeypatch.setattr(precision, "onednn_setting", lambda: {"env": "unset", "effective": None})
    native, reason = linux_x86(ZEN4_CPUINFO, onednn=None)
    assert native is False and "unknown" in reason


def test_x86_asks_tensorflow_whether_onednn_is_on():
    effective = precision.onednn_setting()["effective"]
    native, _ = linux_x86(ZEN4_CPUINFO, onednn=None)
    assert native is bool(effective)


@pytest.mark.parametrize("machine", ["aarch64", "arm64"])
def test_aarch64_with_bf16_feature_is_native(machine):
    native, reason = native_bfloat16(cpuinfo=GRAVITON3_CPUINFO, system="Linux", machine=machine)
    assert native is True and "bf16" in reason


def test_aarch64_without_bf16_feature_is_not_native():
    native, reason = native_bfloat16(cpuinfo=GRAVITON2_CPUINFO, system="Linux", machine="aarch64")
    assert native is False and "lack bf16" in reason


@pytest.mark.parametrize("value, expected", [("1", True), ("0", False), (None, False)])
def test_macos_reads_the_feat_bf16_sysctl(value, expected):
    asked = []

    def sysctl(name):
        asked.append(name)
        return value

    native, reason = native_bfloat16(system="Darwin", machine="arm64", sysctl=sysctl)
    assert native is expected
    assert asked == ["hw.optional.arm.FEAT_BF16"] and "FEAT_BF16" in reason


def test_other_systems_and_unreadable_cpuinfo_are_not_native(tmp_path):
    assert native_bfloat16(system="Windows", machine="AMD64")[0] is False
    missing = tmp_path / "cpuinfo"
    native, reason = native_bfloat16(cpuinfo_path=missing, system="Linux", machine="x86_64")
    assert native is False and str(missing) in reason
    missing.write_text(ZEN4_CPUINFO)
    assert native_bfloat16(cpuinfo_path=missing, system="Linux", machine="x86_64", onednn=True)[0]


# resolve_inference_precision / with_precision


@pytest.mark.parametrize("native, expected", [(True, "bfloat16"), (False, "float32")])
def test_auto_precision_follows_native_bfloat16(monkeypatch, native, expected):
    monkeypatch.setattr(optimize, "native_bfloat16", lambda: (native, "the reason"))
    precision, reason = resolve_inference_precision("auto")
    assert precision == expected and "the reason" in reason
    assert resolve_inference_precision("float32")[0] == "float32"
    assert resolve_inference_precision("bfloat16")[0] == "bfloat16"


def test_unknown_precisions_are_refused():
    with pytest.raises(ValueError, match="'float32', 'bfloat16', 'auto'.*'float16'"):
        resolve_inference_precision("float16")
    with pytest.raises(ValueError, match="resolve 'auto' first"):
        with_precision(keras.Sequential(), "auto")


# to_bfloat16


@pytest.fixture(scope="module")
def tiny():
    """(float32 model, its bfloat16 rebuild, images, float32 logits, bfloat16 logits)."""
    keras.utils.set_random_seed(0)
    rng = np.random.default_rng(0)
    model = models.build(
        "deeplabv3plus",
        num_classes=5,
        input_shape=(SIZE, SIZE, 3),
        backbone="mobilenetv2",
        backbone_options={"alpha": 0.35},
        aspp_filters=16,
        decoder_filters=16,
        low_level_filters=8,
    )
    randomise_batch_norms(model, rng)
    images = rng.uniform(0, 255, (2, SIZE, SIZE, 3)).astype("float32")
    rebuilt = to_bfloat16(model)
    logits = np.asarray(model(images, training=False))
    bf16_logits = rebuilt(images, training=False)
    return model, rebuilt, images, logits, bf16_logits


def test_bfloat16_logits_are_float32_and_close(tiny):
    _, _, _, logits, bf16_logits = tiny
    assert bf16_logits.dtype == tf.float32 and bf16_logits.shape == logits.shape
    bf16_logits = np.asarray(bf16_logits)
    agreement = float(np.mean(bf16_logits.argmax(-1) == logits.argmax(-1)))
    spread = float(logits.max() - logits.min())
    worst = float(np.abs(bf16_logits - logits).max())
    print(f"argmax agreement {agreement:.4f}, max |diff| {worst:.4g} of logit range {spread:.4g}")
    assert agreement >= 0.95
    assert worst <= 0.05 * spread
    assert worst > 0.0  # it did compute in a lower precision


def test_bfloat16_model_computes_convs_in_bfloat16(tiny):
    model, rebuilt, _, _, _ = tiny

    def convs(m):
        return [
            layer
            for layer in m._flatten_layers(include_self=False, recursive=True)
            if isinstance(layer, CONVS)
        ]

    assert len(convs(rebuilt)) == len(convs(model)) > 20
    for layer in convs(rebuilt):
        assert layer.compute_dtype == "bfloat16", layer.path
        assert layer.variable_dtype == "float32", layer.path
    assert {layer.compute_dtype for layer in convs(model)} == {"float32"}  # original unchanged
    assert rebuilt.get_layer("logits").compute_dtype == "float32"
    assert keras.config.dtype_policy().name == "float32"  # global policy restored


def test_bfloat16_model_has_the_same_weights(tiny):
    """float32 variables equal to the original's: a bf16 layer casts them when it computes."""
    model, rebuilt, _, _, _ = tiny
    original = {v.path: v for v in model.weights}
    assert sorted(original) == sorted(v.path for v in rebuilt.weights)
    for variable in rebuilt.weights:
        source = original[variable.path]
        assert keras.backend.standardize_dtype(variable.dtype) == "float32", variable.path
        np.testing.assert_array_equal(
            np.asarray(variable), np.asarray(source), err_msg=variable.path
        )
    assert rebuilt.build_arguments == model.build_arguments
    assert rebuilt.loss_spec == model.loss_spec and rebuilt.dataset == model.dataset


def test_plain_functional_models_convert_and_subclassed_ones_are_refused():
    """Presets and `.keras` files of older runs are plain functional models: they convert."""
    inputs = keras.Input((8, 8, 3))
    hidden = keras.layers.Conv2D(4, 3, padding="same", name="hidden")(inputs)
    outputs = keras.layers.Activation("linear", dtype="float32", name="logits")(hidden)
    plain = keras.Model(inputs, outputs, name="plain")
    converted = to_bfloat16(plain)
    assert not isinstance(converted, SegmentationModel)
    assert converted.get_layer("hidden").dtype_policy.name == "mixed_bfloat16"
    assert converted.get_layer("logits").dtype_policy.name == "float32"  # outputs keep theirs
    images = np.random.default_rng(0).uniform(0, 255, (1, 8, 8, 3)).astype("float32")
    np.testing.assert_allclose(converted(images), plain(images), rtol=0.02, atol=0.5)

    class Subclassed(keras.Model):
        def call(self, x):
            return x

    with pytest.raises(ValueError, match="clones a functional keras.Model.*Subclassed"):
        to_bfloat16(Subclassed())


@pytest.mark.slow  # saves the model, loads it twice and rebuilds it
def test_keras_file_loads_in_bfloat16(tiny, tmp_path):
    model, _, images, _, _ = tiny
    path = tmp_path / "tiny.keras"
    model.save(path)
    segmenter = load_segmenter(path, precision="bfloat16")
    assert segmenter.model.get_layer("logits").compute_dtype == "float32"
    conv = next(
        layer
        for layer in segmenter.model._flatten_layers(include_self=False, recursive=True)
        if isinstance(layer, keras.layers.Conv2D)
    )
    assert conv.compute_dtype == "bfloat16"
    image = images[0].astype(np.uint8)
    float32_ids = load_segmenter(path).class_ids(image)
    assert np.mean(segmenter.class_ids(image) == float32_ids) >= 0.95


def test_shipped_forms_refuse_bfloat16(tmp_path):
    path = tmp_path / "model.tflite"
    path.write_bytes(b"")
    with pytest.raises(ValueError, match="applies to .keras models only.*tflite"):
        load_segmenter(path, precision="bfloat16")


# scripts/benchmark_models.py


def test_benchmark_rows_name_the_bfloat16_path(load_script, monkeypatch):
    script = load_script("benchmark_models")
    assert script.path_name(False, False) == "as built"
    assert script.path_name(False, False, "bfloat16") == "bfloat16"
    assert script.path_name(True, True, "bfloat16") == "bfloat16 + BN folded + XLA"
    assert script.precisions("both") == ["float32", "bfloat16"]
    monkeypatch.setattr(optimize, "native_bfloat16", lambda: (False, "no"))
    assert script.precisions("auto") == ["float32"]


@pytest.mark.parametrize("name", ["predict", "evaluate", "benchmark_models"])
def test_script_precision_flags_list_the_library_values(name, load_script):
    """The scripts define --precision as an enum before importing the library (fast --help):
    it must offer exactly `INFERENCE_PRECISIONS` (benchmark_models: and "both")."""
    from absl import flags

    load_script(name)
    expected = list(optimize.INFERENCE_PRECISIONS)
    values = flags.FLAGS["precision"].parser.enum_values
    # predict.py runs where it predicts: native bf16 when the CPU has it. evaluate.py and
    # benchmark_models.py default to float32 (metrics and like-for-like timings across CPUs).
    assert flags.FLAGS["precision"].default == ("auto" if name == "predict" else "float32")
    assert (sorted(set(values) - {"both"}) if name == "benchmark_models" else values) == (
        sorted(expected) if name == "benchmark_models" else expected
    )


def test_bfloat16_model_folds_its_batch_norms(tiny):
    """Folding clones composite heads (whose sublayers are made in __init__) under the model's
    own policy: without that the decoder mixed float32 and bfloat16 tensors in its concat."""
    _, rebuilt, images, _, bf16_logits = tiny
    folded = fold_batch_norm(rebuilt)
    assert count_batch_norms(folded) == 0
    policies = {
        layer.dtype_policy.name
        for layer in folded._flatten_layers(include_self=False, recursive=True)
        if isinstance(layer, CONVS)
    }
    assert policies == {"mixed_bfloat16"}
    folded_logits = np.asarray(folded(images, training=False))
    bf16_logits = np.asarray(bf16_logits)
    spread = float(bf16_logits.max() - bf16_logits.min())
    assert np.mean(folded_logits.argmax(-1) == bf16_logits.argmax(-1)) >= 0.95
    assert np.abs(folded_logits - bf16_logits).max() <= 0.05 * spread
