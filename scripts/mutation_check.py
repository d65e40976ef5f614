"""Mutation check: does the test suite notice hand-written bugs?

Each mutant replaces one exact piece of library source by a plausible bug. For every mutant the
repository (library, tests, configs, scripts) is copied to a temporary directory, the bug is
applied to the copy only, and the test files that guard that code are run against the copy. A
mutant is *killed* when those tests fail, *survives* when they pass. A mutant whose original
text is no longer in the source is reported as *stale* (the code moved on: update the mutant).

Usage:
    python scripts/mutation_check.py                 # every mutant
    python scripts/mutation_check.py --list          # names and guarding test files
    python scripts/mutation_check.py --only aspp_rate_ignored flip_dropped
    python scripts/mutation_check.py --baseline      # also check the unmutated copy passes
    python scripts/mutation_check.py --dry_run       # only check every mutant still applies

Exit status: 0 when every mutant is killed, 1 otherwise.
"""

import argparse
import dataclasses
import os
import pathlib
import shutil
import subprocess
import sys
import tempfile
import time

REPO = pathlib.Path(__file__).resolve().parents[1]
COPIED = ("keras_fusionseg", "tests", "configs", "scripts", "pyproject.toml", "setup.cfg")


@dataclasses.dataclass(frozen=True)
class Mutant:
    name: str
    path: str  # library file, relative to the repository root
    original: str  # must occur exactly once in that file
    mutated: str
    tests: tuple  # test files (or node ids) expected to kill it
    why: str


MUTANTS = (
    Mutant(
        "flip_dropped",
        "keras_fusionseg/evaluation/inference.py",
        "for flipped in (False, True) if self.flip else (False,):",
        "for flipped in (False,) if self.flip else (False,):",
        ("tests/test_evaluation.py",),
        "multi-scale + flip evaluation silently drops the mirrored copy",
    ),
    Mutant(
        "flip_not_mirrored_back",
        "keras_fusionseg/evaluation/inference.py",
        "                if flipped:\n                    probs = tf.reverse(probs, axis=[2])\n",
        "",
        ("tests/test_evaluation.py",),
        "the mirrored copy's probabilities are averaged without un-flipping them",
    ),
    Mutant(
        "aspp_rate_ignored",
        "keras_fusionseg/layers/deeplabv3plus.py",
        "_conv3x3(filters, rate, self.separable,",
        "_conv3x3(filters, 1, self.separable,",
        ("tests/test_deeplab_layers.py", "tests/test_deeplab_models.py"),
        "ASPP's 3x3 branches ignore their atrous rate",
    ),
    Mutant(
        "bn_recalibration_retraced_every_validation",
        "keras_fusionseg/training/batch_norm.py",
        "        if self._forward is None or self._traced_model is not self.model:\n",
        "        if True:\n",
        ("tests/test_training_batch_norm.py",),
        "precise BN traces its forward pass again before every validation",
    ),
    Mutant(
        "overlays_png_not_written",
        "keras_fusionseg/training/callbacks.py",
        "        if self.png_path:\n",
        "        if False:\n",
        ("tests/test_visualize.py",),
        "validation_overlays.png is never written",
    ),
    Mutant(
        "package_import_skips_training",
        "keras_fusionseg/__init__.py",
        "from keras_fusionseg import backbones, data, evaluation, layers, models, training",
        "from keras_fusionseg import backbones, data, evaluation, layers, models",
        ("tests/test_training_batch_norm.py",),
        "importing the package no longer registers the optimizer and schedule",
    ),
    Mutant(
        "nested_bn_not_loaded",
        "keras_fusionseg/backbones/weights.py",
        "if arrays is None or _shapes(variables) != _shapes(arrays):",
        'if arrays is None or owner.endswith("/bn") or _shapes(variables) != _shapes(arrays):',
        ("tests/test_backbones_weights.py",),
        "batch norms nested in composite layers keep their initial values on loading",
    ),
    Mutant(
        "dupsampling_w_never_trainable",
        "keras_fusionseg/layers/dupsampling.py",
        "trainable=self.trainable_reconstruction,",
        "trainable=False,",
        ("tests/test_dupsampling.py",),
        "trainable_reconstruction=True leaves W fixed",
    ),
    Mutant(
        "strided_conv_keras_same_padding",
        "keras_fusionseg/layers/common.py",
        "pad = self.strides > 1\n",
        "pad = False\n",
        ("tests/test_layers_common_numpy.py",),
        "strided ConvBNReLU pads as Keras 'same' (all at the end), not as the reference",
    ),
    Mutant(
        "strided_separable_keras_same_padding",
        "keras_fusionseg/layers/common.py",
        "strided = strides > 1\n",
        "strided = False\n",
        ("tests/test_layers_common_numpy.py",),
        "strided SeparableConvBN pads as Keras 'same', not as the reference",
    ),
    Mutant(
        "pre_activation_ignored",
        "keras_fusionseg/layers/common.py",
        "        if self.pre_activation:\n            x = tf.nn.relu(x)\n",
        "",
        ("tests/test_layers_common_numpy.py",),
        "SeparableConvBN(pre_activation=True) applies no ReLU before the depthwise conv",
    ),
    Mutant(
        "resize_to_multiple_of_32",
        "keras_fusionseg/layers/common.py",
        "        size = tf.shape(reference)[1:3]\n",
        "        size = tf.shape(reference)[1:3] // 32 * 32\n",
        ("tests/test_models_registry.py::test_model_builds_at_any_size_and_roundtrips",),
        "decoders resize to the largest multiple of 32 instead of the reference size",
    ),
    Mutant(
        "exfuse_models_unregistered",
        "keras_fusionseg/models/__init__.py",
        "import deeplab, dunet, exfuse, fastfcn, gff  #",
        "import deeplab, dunet, fastfcn, gff  #",
        ("tests/test_models_registry.py::test_the_twelve_models_are_registered",),
        "the package forgets to import (so to register) gcn and exfuse",
    ),
    Mutant(
        "training_flip_never_mirrors",
        "keras_fusionseg/data/pipeline.py",
        "    if flip:  # x1 > x2",
        "    if False:  # x1 > x2",
        ("tests/test_data_pipeline.py",),
        "flip=True in the training pipeline never mirrors a crop",
    ),
    Mutant(
        "training_flip_label_not_mirrored",
        "keras_fusionseg/data/pipeline.py",
        'label = sample_box(label, box, crop_hw, "nearest", ignore_label)',
        "unflipped = tf.stack([box[0], tf.minimum(box[1], box[3]), box[2], "
        "tf.maximum(box[1], box[3])])\n"
        '    label = sample_box(label, unflipped, crop_hw, "nearest", ignore_label)',
        ("tests/test_data_pipeline.py",),
        "the image is mirrored but its label is not",
    ),
    Mutant(
        "seb_output_discarded",
        "keras_fusionseg/models/exfuse.py",
        'x = SemanticEmbeddingBranch(name=f"seb_{level}")([x, *higher])',
        'SemanticEmbeddingBranch(name=f"seb_{level}")([x, *higher])',
        ("tests/test_exfuse_switch_effects.py",),
        "semantic_embedding=True computes SEB but feeds the GCN the unembedded features",
    ),
    Mutant(
        "weights_stored_without_byte_planes",
        "keras_fusionseg/models/presets.py",
        "reshape(flat.size, array.dtype.itemsize).T.copy()",
        "reshape(array.dtype.itemsize, flat.size).copy()",
        (
            "tests/test_presets.py::"
            "test_weights_round_trip_bit_exactly_and_byte_planes_pack_float16_smaller",
        ),
        "preset weights written as raw bytes where the reader expects byte planes",
    ),
    Mutant(
        "clipnorm_per_variable",
        "keras_fusionseg/training/optimizers.py",
        'clipping = {"global_clipnorm": global_clipnorm}',
        'clipping = {"clipnorm": global_clipnorm}',
        ("tests/test_training.py",),
        "train.global_clipnorm clips each variable's gradient alone instead of their global norm",
    ),
    Mutant(
        "seb_identity_init_ignored",
        "keras_fusionseg/layers/exfuse.py",
        '{"kernel_initializer": "zeros", "bias_initializer": "ones"}',
        '{"kernel_initializer": "zeros", "bias_initializer": "zeros"}',
        ("tests/test_exfuse_layers.py",),
        "SEB's identity initialisation zeroes every factor (the branch outputs 0 at first)",
    ),
    Mutant(
        "dap_unnormalised",
        "keras_fusionseg/layers/exfuse.py",
        "np.arange(c)] = 1.0 / (k * k)",
        "np.arange(c)] = 1.0",
        ("tests/test_exfuse_switch_effects.py",),
        "DAP sums the k*k adjacent predictions instead of averaging them",
    ),
    Mutant(
        "dap_groups_transposed",
        "keras_fusionseg/layers/exfuse.py",
        "                g = l * k + m\n",
        "                g = m * k + l\n",
        ("tests/test_exfuse_switch_effects.py",),
        "DAP reads group (m, l) for the neighbour at offset (l, m)",
    ),
    Mutant(
        "psp_bottleneck_1x1",
        "keras_fusionseg/models/heads.py",
        'return conv_bn_relu(width, 3, f"{name}_bottleneck")(x)',
        'return conv_bn_relu(width, 1, f"{name}_bottleneck")(x)',
        ("tests/test_pspnet_model.py",),
        "PSPNet's bottleneck after pyramid pooling is 1x1 instead of 3x3",
    ),
    Mutant(
        "segmentation_loss_without_gradient",
        "keras_fusionseg/training/losses.py",
        "return tf.math.divide_no_nan(tf.reduce_sum(pixel_loss), tf.cast(count, tf.float32))",
        "return tf.stop_gradient(\n"
        "            tf.math.divide_no_nan(tf.reduce_sum(pixel_loss), tf.cast(count, tf.float32))\n"
        "        )",
        ("tests/test_training_runs.py::test_training_lowers_the_loss_on_a_fixed_batch",),
        "the segmentation loss has the right value but passes no gradient",
    ),
    Mutant(
        "train_ignores_loss_weights",
        "keras_fusionseg/training/trainer.py",
        "            loss_weights=loss_weights,\n",
        "            loss_weights=None,\n",
        ("tests/test_training_runs.py::test_train_weighs_aux_and_se_losses",),
        "train() compiles without the aux / SE loss weights (all weigh 1)",
    ),
    Mutant(
        "precise_bn_skipped",
        "keras_fusionseg/training/trainer.py",
        "recalibration = config.train.bn_recalibration_batches\n",
        "recalibration = 0\n",
        ("tests/test_training_runs.py",),
        "train.bn_recalibration_batches is ignored: no batch-norm re-estimation",
    ),
    Mutant(
        "final_bn_reestimation_skipped",
        "keras_fusionseg/training/trainer.py",
        "        training_callbacks.recalibrator.recalibrate()",
        "        pass",
        ("tests/test_training_runs.py",),
        "the final checkpoint is saved without re-estimating batch-norm statistics",
    ),
    Mutant(
        "depthwise_kernels_decayed",
        "keras_fusionseg/training/optimizers.py",
        "undecayed_depthwise = [] if decay_depthwise else depthwise_kernels(model)",
        "undecayed_depthwise = []",
        ("tests/test_training_runs.py",),
        "depthwise kernels (named 'kernel' in Keras 3) get weight decay by default",
    ),
    Mutant(
        "evaluate_max_images_off_by_one",
        "keras_fusionseg/evaluation/evaluator.py",
        "if max_images and count >= max_images:",
        "if max_images and count > max_images:",
        ("tests/test_evaluation.py",),
        "evaluate(max_images=n) evaluates n + 1 images",
    ),
    Mutant(
        "upper_bound_downsamples_bilinearly",
        "scripts/dupsampling_upper_bound.py",
        '(-(-h // ratio), -(-w // ratio)), method="area")',
        '(-(-h // ratio), -(-w // ratio)), method="bilinear")',
        ("tests/test_dupsampling_scripts.py",),
        "the bilinear upper bound samples the one-hot label instead of block-averaging it",
    ),
    Mutant(
        "build_ignores_weights",
        "keras_fusionseg/models/registry.py",
        "    if weights is not None:\n        load_model_weights(model, weights)\n",
        "",
        ("tests/test_models_registry.py::test_build_loads_whole_model_and_backbone_weights",),
        "build(weights=...) returns the freshly initialised model",
    ),
    Mutant(
        "build_ignores_backbone_weights",
        "keras_fusionseg/models/registry.py",
        "            _load_backbone_weights(name, backbone_model, backbone_weights, kept)\n",
        "            pass\n",
        ("tests/test_models_registry.py::test_build_loads_whole_model_and_backbone_weights",),
        "build(backbone_weights=...) leaves the backbone freshly initialised",
    ),
    Mutant(
        "poly_decay_ignores_end_learning_rate",
        "keras_fusionseg/training/optimizers.py",
        "decayed = (base - end) * ops.power(1.0 - progress, self.power) + end",
        "decayed = base * ops.power(1.0 - progress, self.power)",
        ("tests/test_training_runs.py::test_poly_decay_ends_at_end_learning_rate",),
        "PolyDecay decays to 0 whatever end_learning_rate says",
    ),
    Mutant(
        "configure_bn_top_level_only",
        "keras_fusionseg/training/trainer.py",
        "    for layer in model._flatten_layers(include_self=False, recursive=True):\n"
        "        if isinstance(layer, keras.layers.BatchNormalization):\n"
        "            layer.synchronized",
        "    for layer in model.layers:\n"
        "        if isinstance(layer, keras.layers.BatchNormalization):\n"
        "            layer.synchronized",
        ("tests/test_training_runs.py::test_configure_batch_norm_reaches_nested_layers",),
        "sync BN and the BN momentum override skip BN inside composite layers",
    ),
    Mutant(
        "xception71_block_width",
        "keras_fusionseg/backbones/xception.py",
        "((256,) * 3, 2), ((728,) * 3, 1), ((728,) * 3, 2)),",
        "((256,) * 3, 2), ((256,) * 3, 1), ((728,) * 3, 2)),",
        ("tests/test_deeplab_fidelity.py",),
        "Xception-71's fourth entry block has 256 instead of 728 channels",
    ),
    Mutant(
        "train_drops_class_weights",
        "keras_fusionseg/training/trainer.py",
        "class_weights=list(config.train.class_weights) or None,",
        "class_weights=None,",
        ("tests/test_training_runs.py::test_train_with_precise_bn_adamw_class_weights_and_ohem",),
        "train.class_weights never reach the loss",
    ),
    Mutant(
        "train_drops_ohem",
        "keras_fusionseg/training/trainer.py",
        "ohem_fraction=config.train.ohem_fraction,",
        "ohem_fraction=1.0,",
        ("tests/test_training_runs.py::test_train_with_precise_bn_adamw_class_weights_and_ohem",),
        "train.ohem_fraction never reaches the loss",
    ),
    Mutant(
        "ignore_label_counted",
        "keras_fusionseg/evaluation/confusion.py",
        "keep = tf.not_equal(labels, ignore_label)",
        "keep = tf.not_equal(labels, -1)",
        ("tests/test_evaluation.py",),
        "void pixels are counted in the confusion matrix",
    ),
    # Issue 17, second round: one mutant per remaining item of its list, each naming the
    # test added for that item.
    Mutant(
        "adamw_decays_bn_and_biases",
        "keras_fusionseg/training/optimizers.py",
        "var_list=[v for v in model.trainable_variables if not is_decayed(v, decay_depthwise)]\n"
        "            + undecayed_depthwise",
        "var_list=undecayed_depthwise",
        ("tests/test_training_runs.py::test_weight_decay_reaches_kernels_only",),
        "AdamW decays BN gamma/beta and biases too (only depthwise kernels excluded)",
    ),
    Mutant(
        "adamw_request_builds_sgd",
        "keras_fusionseg/training/optimizers.py",
        '    if name == "sgd":\n',
        '    if name in ("sgd", "adamw"):\n',
        (
            "tests/test_training_configs.py::test_config_family_lowers_the_loss_and_writes_outputs[adamw]",
        ),
        "train.optimizer='adamw' silently trains with SGD",
    ),
    Mutant(
        "sgd_l2_ignores_exclusions",
        "keras_fusionseg/training/optimizers.py",
        "            and self._var_key(variable) not in self._l2_excluded\n",
        "",
        ("tests/test_training_runs.py::test_weight_decay_reaches_kernels_only",),
        "SGD's L2 term reaches depthwise kernels (named 'kernel') despite the exclusion list",
    ),
    Mutant(
        "poly_decay_not_held_after_decay_steps",
        "keras_fusionseg/training/optimizers.py",
        "progress = ops.clip((step - self.warmup_steps) / span, 0.0, 1.0)",
        "progress = (step - self.warmup_steps) / span",
        ("tests/test_training_runs.py::test_poly_decay_ends_at_end_learning_rate",),
        "PolyDecay is not held at end_learning_rate after decay_steps (NaN past the end)",
    ),
    Mutant(
        "sync_bn_flag_ignored",
        "keras_fusionseg/training/trainer.py",
        "layer.synchronized = bool(synchronized)",
        "layer.synchronized = False",
        ("tests/test_training_runs.py::test_configure_batch_norm_reaches_nested_layers",),
        "train.sync_batch_norm never makes a BN layer synchronized",
    ),
    Mutant(
        "bn_momentum_override_ignored",
        "keras_fusionseg/training/trainer.py",
        "                layer.momentum = float(momentum)\n",
        "                pass\n",
        ("tests/test_training_runs.py::test_configure_batch_norm_reaches_nested_layers",),
        "train.bn_momentum leaves every BN layer's momentum unchanged",
    ),
    Mutant(
        "mixed_precision_policy_ignored",
        "keras_fusionseg/training/trainer.py",
        'with dtype_policy(run.config.mixed_precision or "float32"):',
        'with dtype_policy("float32"):',
        (
            "tests/test_training_configs.py::test_config_family_lowers_the_loss_and_writes_outputs[bf16]",
        ),
        "mixed_precision='mixed_bfloat16' in the config trains in float32",
    ),
    Mutant(
        "logits_follow_the_dtype_policy",
        "keras_fusionseg/models/heads.py",
        'main = keras.layers.Activation("linear", dtype="float32", name="logits")(logits)',
        'main = keras.layers.Activation("linear", name="logits")(logits)',
        (
            "tests/test_training_runs.py::"
            "test_training_lowers_the_loss_on_a_fixed_batch[mixed_bfloat16]",
        ),
        "under mixed precision the logits come out in bfloat16 (loss and softmax in low precision)",
    ),
    Mutant(
        "train_builds_without_aux_heads",
        "keras_fusionseg/training/trainer.py",
        "aux_outputs=config.model.aux_outputs,",
        "aux_outputs=False,",
        (
            "tests/test_training_configs.py::test_config_family_lowers_the_loss_and_writes_outputs[aux_se]",
        ),
        "train() drops the aux head and SE loss that the config asks for",
    ),
    Mutant(
        "best_checkpoint_monitors_a_missing_metric",
        "keras_fusionseg/training/trainer.py",
        'return "val_mean_iou" if list(loss_spec) == ["logits"] else "val_logits_mean_iou"',
        'return "val_mean_iou"',
        (
            "tests/test_training_configs.py::"
            "test_config_family_lowers_the_loss_and_writes_outputs[aux_se]",
        ),
        "aux-output models monitor val_mean_iou (absent): best.keras is saved every epoch",
    ),
    Mutant(
        "register_dataset_overwrites",
        "keras_fusionseg/data/registry.py",
        "    if info.name in _DATASETS:\n"
        '        raise ValueError(f"Dataset {info.name!r} is registered twice.")\n',
        "",
        (
            "tests/test_data_sources.py::test_register_dataset_makes_a_user_dataset_loadable_by_name",
        ),
        "a second register_dataset under a taken name silently replaces the first",
    ),
    Mutant(
        "shifted_label_map_unshifted",
        "keras_fusionseg/data/registry.py",
        "table[1 : num_stored + 1] = np.arange(num_stored, dtype=np.uint8)",
        "table[0:num_stored] = np.arange(num_stored, dtype=np.uint8)",
        ("tests/test_data_sources.py::test_registry_metadata",),
        "ADE20K's label map trains 'other' (0) as class 0 and shifts every class by one",
    ),
    Mutant(
        "representative_images_padded_top_left",
        "keras_fusionseg/evaluation/inference.py",
        "paddings = [[0, 0], [0, (divisor - height % divisor) % divisor]]",
        "paddings = [[0, 0], [(divisor - height % divisor) % divisor, 0]]",
        (
            "tests/test_tflite.py::test_representative_images_are_the_split_padded_or_resized",
            "tests/test_export_saved_model.py::test_pad_policies_pad_bottom_right_and_crop_back",
        ),
        "images (and calibration images) are padded at the top, not the bottom",
    ),
    Mutant(
        "int8_calibrated_on_unit_range",
        "keras_fusionseg/export/tflite.py",
        "                image = np.asarray(image, np.float32)\n",
        "                image = np.asarray(image, np.float32) / 255.0\n",
        (
            "tests/test_tflite.py::test_conversion_matches_keras[full_int8-None]",
            "tests/test_tflite.py::test_conversion_matches_keras[full_int8-input_size5]",
        ),
        "full-int8 calibration sees pixels in [0, 1] while inference feeds [0, 255]",
    ),
    Mutant(
        "gff_gate_complement_dropped",
        "keras_fusionseg/layers/gff.py",
        "x_new = (1.0 + g_l) * x_l + (1.0 - g_l) * received",
        "x_new = (1.0 + g_l) * x_l + g_l * received",
        ("tests/test_gff_layers.py",),
        "GFF weighs the received features by G_l instead of 1 - G_l (eq. 5)",
    ),
    Mutant(
        "jpu_dilation_order_reversed",
        "keras_fusionseg/layers/fastfcn.py",
        "            for rate in self.dilation_rates\n",
        "            for rate in reversed(self.dilation_rates)\n",
        ("tests/test_fastfcn_layers.py",),
        "JPU's branches come out in reverse dilation order (rate 8 first)",
    ),
    Mutant(
        "gcn_without_biases",
        "keras_fusionseg/layers/exfuse.py",
        'return keras.layers.Conv2D(filters, shape, padding="same", use_bias=use_bias, name=name)',
        'return keras.layers.Conv2D(filters, shape, padding="same", use_bias=False, name=name)',
        ("tests/test_exfuse_layers.py",),
        "GlobalConvolution(use_bias=True) builds its convolutions without biases",
    ),
    Mutant(
        "atrous_schedule_one_stride_late",
        "keras_fusionseg/backbones/output_stride.py",
        "if stride > 1 and self.current_stride >= self.output_stride:",
        "if stride > 1 and self.current_stride > self.output_stride:",
        (
            "tests/test_deeplab_fidelity.py::test_deeplabv3plus_xception65_macs_equal_the_hand_count[8]",
        ),
        "backbones asked for output stride 8 (16) stride once more: OS16 (32) features",
    ),
    Mutant(
        "evaluate_multiscale_ignores_flip",
        "keras_fusionseg/evaluation/evaluator.py",
        "        scales=scales,\n        flip=flip,\n",
        "        scales=scales,\n        flip=False,\n",
        ("tests/test_evaluation.py::test_evaluate_multiscale_flip_and_max_images",),
        'evaluate(mode="multiscale", flip=True) never predicts the mirrored copy',
    ),
    Mutant(
        "gff_config_drops_sequential",
        "keras_fusionseg/layers/gff.py",
        '            "sequential": self.sequential,\n',
        '            "sequential": False,\n',
        ("tests/test_layers_registered.py",),
        "GatedFullyFusion.get_config forgets sequential fusion: a reloaded GFF fuses at once",
    ),
)


def copy_repo(destination):
    for name in COPIED:
        source = REPO / name
        if source.is_dir():
            shutil.copytree(
                source,
                destination / name,
                ignore=shutil.ignore_patterns("__pycache__", "*.pyc", "runs", ".pytest_cache"),
            )
        elif source.exists():
            shutil.copy2(source, destination / name)


def apply(mutant, root):
    """Applies `mutant` to the copy at `root`; False when its original text is missing."""
    path = root / mutant.path
    text = path.read_text()
    if text.count(mutant.original) != 1:
        return False
    path.write_text(text.replace(mutant.original, mutant.mutated))
    return True


def run_tests(root, tests, timeout):
    """pytest exit code of `tests` run against the copy at `root` (None on timeout)."""
    env = dict(os.environ, PYTHONPATH=str(root), TF_CPP_MIN_LOG_LEVEL="2")
    command = [sys.executable, "-m", "pytest", "-q", "-x", "-p", "no:cacheprovider"]
    command += ["-p", "no:xdist", *tests]
    try:
        result = subprocess.run(
            command, cwd=root, env=env, capture_output=True, text=True, timeout=timeout
        )
    except subprocess.TimeoutExpired:
        return None, ""
    return result.returncode, result.stdout[-2000:]


def imports_from(root):
    """The package file a test run in `root` imports (guards against testing the original)."""
    env = dict(os.environ, PYTHONPATH=str(root), TF_CPP_MIN_LOG_LEVEL="2")
    code = "import keras_fusionseg.evaluation as e; print(e.__file__)"
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=root, env=env, capture_output=True, text=True
    )
    return out.stdout.strip()


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--only", nargs="+", metavar="NAME", help="run only these mutants")
    parser.add_argument("--list", action="store_true", help="list the mutants and exit")
    parser.add_argument("--baseline", action="store_true", help="first run each test set unmutated")
    parser.add_argument(
        "--dry_run", action="store_true", help="only check that every mutant still applies"
    )
    parser.add_argument("--timeout", type=float, default=900.0, help="seconds per mutant")
    parser.add_argument("--verbose", action="store_true", help="print pytest's tail per mutant")
    args = parser.parse_args(argv)

    mutants = MUTANTS
    if args.only:
        unknown = sorted(set(args.only) - {m.name for m in MUTANTS})
        if unknown:
            parser.error(f"unknown mutants {unknown}; known: {[m.name for m in MUTANTS]}")
        mutants = tuple(m for m in MUTANTS if m.name in args.only)
    if args.list:
        for m in mutants:
            print(f"{m.name:32s} {m.path}\n{'':32s} {m.why}; tests: {' '.join(m.tests)}")
        return 0
    if args.dry_run:
        stale = [m.name for m in mutants if (REPO / m.path).read_text().count(m.original) != 1]
        print(f"{len(mutants) - len(stale)}/{len(mutants)} mutants apply; stale: {stale or 'none'}")
        return 1 if stale else 0

    outcomes = {}
    with tempfile.TemporaryDirectory(prefix="mutation_check_") as tmp:
        tmp = pathlib.Path(tmp)
        if args.baseline:
            clean = tmp / "baseline"
            copy_repo(clean)
            for tests in sorted({m.tests for m in mutants}):
                code, tail = run_tests(clean, tests, args.timeout)
                if code != 0:
                    print(f"baseline fails for {' '.join(tests)} (exit {code}):\n{tail}")
                    return 1
            print("baseline: every test set passes unmutated")
        for m in mutants:
            root = tmp / m.name
            copy_repo(root)
            expected = str(root / "keras_fusionseg" / "evaluation" / "__init__.py")
            if imports_from(root) != expected:
                print(f"the copy at {root} does not shadow the installed package")
                return 1
            start = time.monotonic()
            if not apply(m, root):
                outcome, tail = "stale", ""
            else:
                code, tail = run_tests(root, m.tests, args.timeout)
                outcome = {0: "SURVIVED", 1: "killed", None: "timeout"}.get(code, f"error {code}")
            outcomes[m.name] = outcome
            print(f"{m.name:32s} {outcome:10s} {time.monotonic() - start:6.0f}s  {m.why}")
            if args.verbose and tail:
                print(tail)
            shutil.rmtree(root, ignore_errors=True)
    killed = sum(o == "killed" for o in outcomes.values())
    print(f"mutants killed: {killed}/{len(outcomes)}")
    return 0 if killed == len(outcomes) else 1


if __name__ == "__main__":
    sys.exit(main())
