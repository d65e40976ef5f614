"""Each shipped config family trains: `train()` on one fixed batch lowers the loss, writes its outputs.

The families and what sets them apart: FastFCN-EncNet (aux head + SE presence loss), the CamVid
DeepLabv3+ config (precise BN, warm-up, class weights), and the quick-start config with AdamW
or with bfloat16 mixed precision. Each run keeps the family's training settings and shrinks
the rest: the model's tiny variant, four 48x48 synthetic images in one batch with no
augmentation (every step sees the same batch), one step per epoch so that the history holds
the loss of every step.

Before those (fast): `configs/camvid.py`'s variants give, field by field, the configs of the six
CamVid files they replaced (flattened into tests/data/camvid_configs_before_variants.json before
those files were deleted), and its variant argument is checked against the library's names.
"""

import json
import pathlib

import keras
import numpy as np
import pytest
from absl import flags
from config_files import CONFIGS, flatten, load_config, shipped_configs
from ml_collections import config_flags

from keras_fusionseg import models
from keras_fusionseg.training import config as config_lib
from keras_fusionseg.training import trainer

REPO = pathlib.Path(__file__).resolve().parents[1]
STEPS = 16

# Old config file -> {"variant": its replacement, "changed_fields": what it changed from
# default_config()}, saved from the files themselves (commit 62cd8ff) before they were deleted.
BEFORE_VARIANTS = json.loads((REPO / "tests/data/camvid_configs_before_variants.json").read_text())


def expected_fields(old_file):
    """The old file's flattened config, on today's `default_config()`."""
    changed = BEFORE_VARIANTS[old_file]["changed_fields"]
    return {**flatten(config_lib.default_config()), **changed}


@pytest.mark.parametrize("old_file", sorted(BEFORE_VARIANTS))
def test_camvid_variant_equals_the_config_file_it_replaced(old_file):
    variant = BEFORE_VARIANTS[old_file]["variant"]
    assert flatten(load_config(variant)) == expected_fields(old_file)


def test_baseline_file_and_bare_camvid_config_are_the_baseline_variant():
    """README, the preset's metadata and make_preset name the baseline file: it stays."""
    # The one deliberate change since the files: the baseline trains with AdamW (README).
    baseline = {
        **expected_fields("deeplabv3plus_mobilenetv2_camvid"),
        "train.optimizer": "'adamw'",
        "train.learning_rate": "0.002",
        "train.weight_decay": "0.01",
    }
    assert flatten(load_config("deeplabv3plus_mobilenetv2_camvid")) == baseline
    assert flatten(load_config("camvid")) == baseline
    # As scripts/train.py reads --config=configs/camvid.py:model=pspnet (ml_collections).
    argv = ["train.py", f"--config={CONFIGS / 'camvid.py'}:model=pspnet"]
    flag_values = flags.FlagValues()
    config_flags.DEFINE_config_file("config", flag_values=flag_values, sys_argv=argv)
    flag_values(argv)
    assert flatten(flag_values.config) == expected_fields("pspnet_resnet50_camvid")


def test_every_camvid_recipe_is_a_shipped_config():
    names = shipped_configs()
    assert {f"camvid:model={model}" for model in ("pspnet", "dunet")} <= set(names)
    assert not any("resnet50_camvid" in name for name in names)


def test_camvid_variant_keys_set_their_fields():
    config = load_config(
        "camvid:model=gffnet,output_stride=16,optimizer=adamw,precision=mixed_bfloat16"
    )
    assert config.model.name == "gffnet" and config.model.output_stride == 16
    assert config.train.optimizer == "adamw" and config.mixed_precision == "mixed_bfloat16"
    assert (config.train.learning_rate, config.train.weight_decay) == (2e-3, 1e-2)
    sgd = load_config("camvid:optimizer=sgd")  # the baseline's L2 back, with SGD's rate
    assert (sgd.train.optimizer, sgd.train.learning_rate, sgd.train.weight_decay) == (
        "sgd",
        0.05,
        4e-5,
    )
    assert config.model.aux_outputs and config.model.backbone == "resnet50"
    config_lib.check_fields(config, "camvid")


def test_mobilenetv2_design_recipes_keep_the_baselines_budget():
    """The design comparison: only the model differs from the baseline, never the data,
    optimizer or backbone; a design whose step is slower may train fewer epochs to stay inside
    the same 60 minutes, never more (equal budget, README "Presets"); ExFuse alone takes a
    lower peak rate (its loss rose at the baseline's, configs/camvid.py)."""
    baseline = flatten(load_config("camvid"))
    for model in ("pspnet", "gffnet", "fastfcn_psp", "gcn", "exfuse", "dunet"):
        config = flatten(load_config(f"camvid:model={model},backbone=mobilenetv2"))
        differing = {key for key in baseline if baseline[key] != config[key]}
        assert differing <= {
            "model.name",
            "model.options",
            "model.aux_outputs",
            "model.output_stride",
            "train.epochs",
        } | ({"train.learning_rate"} if model == "exfuse" else set()), model
        epochs = load_config(f"camvid:model={model},backbone=mobilenetv2").train.epochs
        assert epochs <= load_config("camvid").train.epochs, model  # ints: flatten gives reprs
    assert load_config("camvid:model=fastfcn_psp,backbone=mobilenetv2").train.epochs == 15
    exfuse = load_config("camvid:model=exfuse,backbone=mobilenetv2").train
    assert (exfuse.epochs, exfuse.learning_rate, exfuse.weight_decay) == (9, 5e-4, 1e-2)
    exfuse_sgd = load_config("camvid:model=exfuse,backbone=mobilenetv2,optimizer=sgd").train
    assert exfuse_sgd.learning_rate == 0.05  # the AdamW rate is AdamW's only
    pspnet = load_config("camvid:model=pspnet,backbone=mobilenetv2").model
    assert (pspnet.options["head_width"], pspnet.options["aux_width"]) == (256, 128)


@pytest.mark.parametrize(
    "variant, message",
    [
        ("modle=pspnet", r"unknown key\(s\) \['modle'\]; keys: \['model', 'backbone'"),
        ("model=psp", r"Unknown model 'psp'. Available models: \[.*'pspnet'"),
        ("model=gcn", r"no recipe for model 'gcn' with backbone resnet50; models with a"),
        ("model=encnet,backbone=mobilenetv2", r"'encnet' with backbone mobilenetv2; .*'pspnet'\]"),
        ("backbone=xception65", r"backbone must be one of \['resnet50', 'mobilenetv2'\]"),
        ("output_stride=4", r"`output_stride` must be one of \[8, 16, 32\], received 4"),
        ("optimizer=adam", r"optimizer must be one of \['sgd', 'adamw'\], received 'adam'"),
        ("precision=float16", r"precision must be one of \['', 'float32', 'mixed_float16'"),
        ("model", r"expected key=value, received 'model'"),
    ],
)
def test_camvid_variant_errors_name_the_allowed_values(variant, message):
    with pytest.raises(ValueError, match=message):
        load_config(f"camvid:{variant}")


def shrunk(config):
    """`config` with its training settings kept, on the tiny model and one fixed batch."""
    tiny = dict(models.get_model_spec(config.model.name).tiny)
    config.model.backbone = tiny.pop("backbone")
    config.model.backbone_options = tiny.pop("backbone_options")
    config.model.options = tiny
    config.data.name, config.data.data_dir = "synthetic_shapes", ""
    config.data.options = {"num_images": 4, "image_size": (48, 48)}
    config.data.crop_size = (48, 48)
    config.data.batch_size = 4
    config.data.scale_range = ()
    config.data.flip = config.data.color_jitter = False
    config.data.shuffle_buffer = 4
    if config.train.class_weights:  # CamVid's 11 weights -> six synthetic_shapes classes
        config.train.class_weights = (0.5, 1.0, 1.5, 1.0, 2.0, 1.0)
    config.train.epochs, config.train.steps_per_epoch = STEPS, 1
    config.train.warmup_steps = min(config.train.warmup_steps, 2)
    config.train.validation_every_epochs = STEPS
    config.train.backup_every_steps = STEPS
    config.train.num_overlay_images = 1
    config.train.verbose = 0
    config.eval.mode = "whole"
    return config


def aux_and_se():
    return shrunk(load_config("camvid:model=fastfcn_encnet"))


def precise_bn():
    config = shrunk(load_config("camvid"))
    assert config.train.bn_recalibration_batches > 0 and config.train.class_weights
    config.train.bn_recalibration_batches = 2
    return config


def adamw():
    config = shrunk(load_config("quickstart"))
    config.train.optimizer, config.train.learning_rate = "adamw", 3e-3
    config.train.weight_decay = 1e-2
    return config


def bfloat16():
    config = shrunk(load_config("quickstart"))
    config.mixed_precision = "mixed_bfloat16"
    return config


FAMILIES = {"aux_se": aux_and_se, "precise_bn": precise_bn, "adamw": adamw, "bf16": bfloat16}


@pytest.mark.slow
@pytest.mark.parametrize("family", FAMILIES)
def test_config_family_lowers_the_loss_and_writes_outputs(family, tmp_path):
    config = FAMILIES[family]()
    workdir = tmp_path / "run"
    results = trainer.train(config, str(workdir), strategy="one_device")
    losses = results["history"]["loss"]
    assert results["train_steps"] == STEPS and len(losses) == STEPS
    assert np.isfinite(losses).all() and min(losses[-3:]) < 0.8 * losses[0], losses
    metrics = json.loads((workdir / "metrics.json").read_text())
    assert 0 <= metrics["mean_iou"] <= 1 and metrics["num_images"] > 0
    for name in ("checkpoints/final.keras", "checkpoints/best.keras", "config.json"):
        assert (workdir / name).exists(), name
    # Validation overlays go to TensorBoard (event files); the curves sit beside metrics.json.
    assert any((workdir / "logs" / "validation_overlays").glob("events.out.tfevents.*"))
    assert (workdir / "training_curves.csv").read_text().count("\n") == STEPS + 1
    saved = json.loads((workdir / "config.json").read_text())
    assert saved["train"]["optimizer"] == config.train.optimizer
    model = keras.models.load_model(workdir / "checkpoints" / "final.keras")
    # best.keras is chosen on a metric the logs hold (Keras saves every epoch otherwise).
    assert trainer._monitor_name(model.loss_spec) in results["history"]
    if family == "aux_se":
        history = results["history"]
        assert history["aux_loss"][-1] > 0 and history["se_loss"][-1] > 0
    if family == "adamw":
        assert isinstance(model.optimizer, keras.optimizers.AdamW)
    if family == "bf16":
        layers = model._flatten_layers(include_self=False, recursive=True)
        conv = next(layer for layer in layers if isinstance(layer, keras.layers.Conv2D))
        assert conv.dtype_policy.name == "mixed_bfloat16"
        assert model.output.dtype == "float32"
