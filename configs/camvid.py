r"""CamVid (11 classes): the ~60-minute CPU baseline and its model variants, in one config.

    python scripts/train.py --config=configs/camvid.py \
        --config.data.data_dir=../shared/data/camvid --workdir=runs/camvid
    python scripts/train.py --config=configs/camvid.py:model=pspnet   # runs/camvid_model_pspnet
    python scripts/train.py --config=configs/camvid.py:model=gffnet,output_stride=16,precision=mixed_bfloat16

The text after ':' is the variant, `key=value` pairs separated by commas (ml_collections passes
it to `get_config(arg)`); no variant is the baseline (`configs/deeplabv3plus_mobilenetv2_camvid.py`
is that baseline under its preset name). Keys, each checked against the module that defines
its values:
- model: a model with a recipe in `VARIANTS` below (names: `keras_fusionseg.models.list_models()`);
- backbone: `mobilenetv2` takes the model's recipe from `MOBILENETV2_VARIANTS` instead: the
  equal-budget design comparison (README "Model zoo"), every design on the baseline's
  MobileNetV2 x1.0 with the baseline's data, AdamW schedule and budget;
- output_stride: replaces the recipe's (`keras_fusionseg.backbones.VALID_OUTPUT_STRIDES`);
- optimizer: `keras_fusionseg.training.config.OPTIMIZERS`; it also sets that optimizer's
  learning rate (and AdamW's decoupled decay) from `OPTIMIZER_SETTINGS`; the baseline trains
  with AdamW, the ResNet-50 recipes with SGD;
- precision: `config.mixed_precision`, one of `keras_fusionseg.training.config.PRECISIONS`.
Any field can still be overridden with `--config.<field>=value`.

Baseline recipe (reasons in README "Training and evaluation"):
- DeepLabv3+ on MobileNetV2 x1.0 (from scratch) at output stride 16, with the paper's atrous
  *separable* convs in ASPP and decoder (DeepLabv3+ Sec. 3.2), 128 channels wide instead of the
  paper's 256: on a 2-core CPU a step takes 2.35 s instead of 3.17 s (batch 8, 256x352), so the
  same 60 minutes train 1.35x more steps, which a from-scratch run needs more than head width.
- 256x352 crops, batch 8, AdamW from 2e-3 with decoupled weight decay 1e-2 (kernels only: no
  BN, bias or depthwise decay), poly (power 0.9) after a 100-step warm-up. In one 60-minute
  run each on the same 2-core machine it reached 56.8 val mIoU in 1,196 steps where SGD
  (momentum 0.9, poly from 0.05, L2 4e-5 on kernels: `optimizer=sgd`) reached 48.9: a
  from-scratch run this short is under-fitted (training loss still falling at the end), and
  Adam's per-parameter step sizes get further in the same steps.
- Class weights: square roots of median-frequency weights from the train split's pixel
  shares (classes.txt order), so thin classes (pole, sign, pedestrian, bicyclist) get
  gradient without letting them dominate.

The ResNet-50 variants keep the data and schedule and take the papers' weight decay for ResNet
(1e-4); they are sized for an accelerator (a ResNet-50 step at 256x352, batch 8, takes tens of
seconds on a 2-core CPU). `model=dunet` needs its basis fitted on the train labels first:

    python scripts/fit_dupsampling.py --source=camvid --data_dir=../shared/data/camvid \
        --ratio=16 --channels=64 --output=runs/camvid_dupsampling_r16.npz

(its ratio is the output stride: with `output_stride=8`, fit `--ratio=8` and pass that file
as `--config.model.options.dupsampling_basis=...`).
"""

from keras_fusionseg import models
from keras_fusionseg.backbones.registry import check_output_stride
from keras_fusionseg.training.config import OPTIMIZERS, PRECISIONS, default_config
from keras_fusionseg.utils.cli_options import parse_key_values

# Train-split pixel shares (%) per class, from the dataset's SOURCE.md histogram.
TRAIN_PIXEL_SHARES = (16.85, 23.26, 0.98, 31.66, 4.49, 9.72, 1.17, 1.13, 5.87, 0.64, 0.29)

BASELINE = "deeplabv3plus"
RESNET_WEIGHT_DECAY = 1e-4  # the papers' value for ResNet


def _recipe(backbone, output_stride, aux_outputs, backbone_options=None, options=None, **train):
    return {
        "model": {
            "backbone": backbone,
            "backbone_options": backbone_options or {},
            "output_stride": output_stride,
            "aux_outputs": aux_outputs,
            "options": options or {},
        },
        "train": {"weight_decay": RESNET_WEIGHT_DECAY, **train},
    }


# Model name -> the model fields (and training fields) of its CamVid recipe.
VARIANTS = {
    # The baseline (see the module docstring).
    "deeplabv3plus": _recipe(
        "mobilenetv2",
        16,
        False,
        backbone_options={"alpha": 1.0},
        options={
            "aspp_filters": 128,
            "decoder_filters": 128,
            "low_level_filters": 48,
            "separable": True,
        },
        optimizer="adamw",
        weight_decay=4e-5,  # L2 on kernels when trained with optimizer=sgd
    ),
    # PSPNet (dilated ResNet-50, output stride 8, aux head 0.4): the GFF baseline.
    "pspnet": _recipe("resnet50", 8, True),
    # GFFNet (PSPNet + gated fully fusion + dense feature pyramid, aux 0.4).
    "gffnet": _recipe("resnet50", 8, True),
    # ExFuse on GCN (ResNet-50, all components; SS losses 0.4 in all, ECRE loss 0.4).
    "exfuse": _recipe("resnet50", 32, True),
    # FastFCN: JPU on a non-dilated ResNet-50 (the model's default, deep stem) + EncNet head,
    # aux 0.2 + SE 0.2.
    "fastfcn_encnet": _recipe(None, 32, True),
    # DUpsampling, the paper's default (Tian et al., CVPR 2019, Table 2's best and Fig. 2's
    # light decoder): "P1" is conv1_3 of the three-conv deep stem (which only the deep stem
    # has), fused with "P4" (b3u6c3); the basis is fitted on the train labels (see above).
    "dunet": _recipe(
        "resnet50",
        16,
        False,
        backbone_options={"deep_stem": True},
        options={"dupsampling_basis": "runs/camvid_dupsampling_r16.npz"},
    ),
}

# The design comparison on the baseline's backbone (MobileNetV2 x1.0, from scratch, output
# stride 16 as the baseline, AdamW as the baseline). Head widths are half the papers' (the
# baseline's ASPP and decoder are 128 wide instead of 256), auxiliary heads as in the papers.
MOBILENETV2 = {"backbone": "mobilenetv2", "backbone_options": {"alpha": 1.0}}


def _mobilenetv2_recipe(output_stride, aux_outputs, options, train=None, **model):
    """A design's recipe on the baseline's backbone and the baseline's AdamW training.

    `train` overrides training fields, e.g. fewer epochs for a design whose step is slower,
    so that every design gets the same 60 minutes of training; its `optimizer_settings`
    ({optimizer: {field: value}}) replace `OPTIMIZER_SETTINGS` for that optimizer only.
    """
    return {
        "model": {
            **MOBILENETV2,
            "output_stride": output_stride,
            "aux_outputs": aux_outputs,
            "options": options,
            **model,
        },
        # weight_decay is the L2 used if optimizer=sgd
        "train": {"optimizer": "adamw", "weight_decay": 4e-5, **(train or {})},
    }


MOBILENETV2_VARIANTS = {
    "deeplabv3plus": VARIANTS["deeplabv3plus"],
    # PSPNet: pyramid pooling on "P5" (320 ch), 3x3 conv to 256 (paper 512); FCN aux head on
    # "P4" (96 ch, 128 wide; paper 256) with weight 0.4.
    "pspnet": _mobilenetv2_recipe(16, True, {"head_width": 256, "aux_width": 128}),
    # GFFNet: the PSPNet above + every stage "P2".."P5" reduced to 128 (paper 256), gated
    # fully fused, and the dense feature pyramid (128 wide; paper 256).
    "gffnet": _mobilenetv2_recipe(
        16,
        True,
        {"head_width": 256, "aux_width": 128, "gff_width": 128, "dfp_width": 128},
    ),
    # FastFCN: JPU (256 wide; paper 512) on the non-dilated backbone (output stride 32:
    # "P3".."P5" at 8/16/32) and the PSP head (256) at stride 8; aux head on "P4". Its step
    # takes 4.3 s (Zen 4, batch 8, 256x352) against the baseline's ~2.4 s, so 60 minutes hold
    # 15 epochs (690 steps) instead of 26 (1,196).
    "fastfcn_psp": _mobilenetv2_recipe(
        32,
        True,
        {"jpu_width": 256, "head_width": 256, "aux_width": 128},
        train={"epochs": 15},
    ),
    # GCN with boundary refinement on "P2".."P5" (output stride 32), the ExFuse baseline.
    "gcn": _mobilenetv2_recipe(32, False, {}),
    # ExFuse on that GCN: SS (128 wide; paper 256), SEB, ECRE, DAP; layer rearrangement is a
    # ResNet change and does not apply to MobileNetV2. DAP makes the decoder num_classes * 9
    # = 99 wide up to full resolution (the paper's 189 for 21 classes): 30.7B MACs per
    # 256x352 crop against GCN's 0.89B, 19.9B of them in the two boundary refinements at
    # strides 2 and 1. A step takes 7.5 s (batch 8) on the Intel Xeon (family 6, model 167)
    # that trained the preset against GCN's ~1 s, so 60 minutes hold 9 epochs (414 steps)
    # there (11.4 s and 6 epochs on a Zen 4). Peak AdamW rate 5e-4 instead of 2e-3: from
    # scratch this normalisation-free 99-wide decoder's loss rose whenever the rate was high
    # (README "Model zoo": 150-step probes, 3 seeds each, val mIoU 22.7 mean at 5e-4 against
    # 14.2 at 2e-3; the full 276-step run at 2e-3 reached 27.3).
    "exfuse": _mobilenetv2_recipe(
        32,
        True,
        {"ss_channels": 128},
        train={"epochs": 9, "optimizer_settings": {"adamw": {"learning_rate": 5e-4}}},
    ),
    # DUpsampling (light decoder): "P1" (stride 2, 16 ch) and "P4" fused with "P5" at output
    # stride 16, decoder 128 wide (paper 256); basis fitted as in the module docstring.
    "dunet": _mobilenetv2_recipe(
        16,
        False,
        {
            "decoder_channels": 128,
            "dupsampling_basis": "runs/camvid_dupsampling_r16.npz",
        },
    ),
}

# Per optimizer: its starting rate (and AdamW's decoupled decay, which replaces the recipe's L2).
# AdamW's are the baseline's (56.8 val mIoU in 60 minutes, README); not tuned for ResNet-50.
OPTIMIZER_SETTINGS = {
    "sgd": {"learning_rate": 0.05},
    "adamw": {"learning_rate": 2e-3, "weight_decay": 1e-2},
}

KEYS = ("model", "backbone", "output_stride", "optimizer", "precision")
BACKBONES = ("resnet50", "mobilenetv2")  # which recipe table: VARIANTS or MOBILENETV2_VARIANTS


def sqrt_median_frequency_weights(shares):
    ordered = sorted(shares)
    median = ordered[len(ordered) // 2]
    return tuple(round((median / share) ** 0.5, 4) for share in shares)


def recipe_table(variant):
    """The recipes a parsed variant picks from: MobileNetV2's or the ResNet-50 ones."""
    return MOBILENETV2_VARIANTS if variant.get("backbone") == "mobilenetv2" else VARIANTS


def parse_variant(arg):
    """The variant text as a checked dict: "model=pspnet,output_stride=16" -> {"model": ...}."""
    variant = {"model": BASELINE, **parse_key_values(arg or "", what="configs/camvid.py variant")}
    unknown = sorted(set(variant) - set(KEYS))
    if unknown:
        raise ValueError(
            f"configs/camvid.py variant {arg!r}: unknown key(s) {unknown}; keys: {list(KEYS)}."
        )
    models.get_model_spec(variant["model"])  # an unregistered name: the registry's error
    if variant.get("backbone", BACKBONES[0]) not in BACKBONES:
        raise ValueError(
            f"configs/camvid.py variant: backbone must be one of {list(BACKBONES)}, "
            f"received {variant['backbone']!r}."
        )
    recipes = recipe_table(variant)
    if variant["model"] not in recipes:
        raise ValueError(
            f"configs/camvid.py has no recipe for model {variant['model']!r} with backbone "
            f"{variant.get('backbone', BACKBONES[0])}; models with a recipe: {sorted(recipes)}."
        )
    if "output_stride" in variant:
        check_output_stride(variant["output_stride"])
    for key, allowed in (("optimizer", OPTIMIZERS), ("precision", PRECISIONS)):
        if key in variant and variant[key] not in allowed:
            raise ValueError(
                f"configs/camvid.py variant: {key} must be one of {list(allowed)}, "
                f"received {variant[key]!r}."
            )
    return variant


def get_config(arg=None):
    variant = parse_variant(arg)
    recipe = recipe_table(variant)[variant["model"]]
    config = default_config()
    config.model.name = variant["model"]
    for field, value in recipe["model"].items():
        config.model[field] = value
    config.model.output_stride = variant.get("output_stride", config.model.output_stride)
    config.mixed_precision = variant.get("precision", config.mixed_precision)
    config.data.name = "camvid"
    config.data.data_dir = "../shared/data/camvid"
    config.data.crop_size = (256, 352)
    config.data.batch_size = 8
    config.data.scale_range = (0.75, 1.5)
    config.data.shuffle_buffer = 128
    config.data.cache = True
    config.train.epochs = 26  # 1,196 steps: under 60 min on 2 AVX2 cores (README)
    config.train.steps_per_epoch = 46  # 367 images / 8
    config.train.warmup_steps = 100
    train = dict(recipe["train"])
    config.train.optimizer = variant.get("optimizer", train.pop("optimizer", "sgd"))
    own_settings = train.pop("optimizer_settings", {}).get(config.train.optimizer, {})
    config.train.update(train)
    config.train.update({**OPTIMIZER_SETTINGS[config.train.optimizer], **own_settings})
    config.train.class_weights = sqrt_median_frequency_weights(TRAIN_PIXEL_SHARES)
    config.train.bn_momentum = 0.99  # the models' 0.9997 is for 30k+ step schedules
    config.train.bn_recalibration_batches = 20  # precise BN before validation
    config.train.backup_every_steps = 46
    config.train.validation_every_epochs = 5
    config.train.num_overlay_images = 3
    config.train.verbose = 1
    return config
