"""Experiment configuration: the full set of fields, their defaults, and validation.

Every config file in `configs/` starts from `default_config()` and changes fields;
`validate_config` rejects misspelled or missing fields, unknown models, backbones and
datasets, bad values and an unwritable workdir, before anything is built or trained.
"""

import difflib
import inspect
import os
import tempfile

import ml_collections

# Sub-dicts whose keys are passed through to a builder, so any key is allowed.
FREE_FORM = ("model.backbone_options", "model.options", "model.loss_weights", "data.options")

OPTIMIZERS = ("sgd", "adamw")
PRECISIONS = ("", "float32", "mixed_float16", "mixed_bfloat16")


def default_config():
    """All configuration fields with their defaults (a tiny synthetic run)."""
    config = ml_collections.ConfigDict()
    config.seed = 0
    config.deterministic = False  # seeds every op and turns on TF op determinism (slower)
    config.mixed_precision = ""  # "", "mixed_float16" or "mixed_bfloat16"

    config.model = ml_collections.ConfigDict()
    config.model.name = "deeplabv3plus"
    config.model.backbone = "mobilenetv2"
    config.model.backbone_options = {"alpha": 0.35}
    config.model.output_stride = 16
    config.model.aux_outputs = False
    config.model.options = {}
    config.model.loss_weights = {}  # aux output name -> weight, overriding the model's

    config.data = ml_collections.ConfigDict()
    config.data.name = "synthetic_shapes"  # registered name, folder or TFRecord glob ({split})
    config.data.data_dir = ""
    config.data.num_classes = 0  # TFRecords (or folders without classes.txt): required
    config.data.class_names = ()  # optional names for TFRecords and folders
    config.data.options = {}  # extra `load_split` options, e.g. synthetic `num_images`
    config.data.train_split = "train"
    config.data.val_split = "val"
    config.data.crop_size = (128, 128)
    config.data.batch_size = 8  # global batch, split across replicas
    config.data.scale_range = (0.5, 2.0)
    config.data.flip = True
    config.data.color_jitter = True
    config.data.shuffle_buffer = 256
    config.data.cache = True

    config.train = ml_collections.ConfigDict()
    config.train.epochs = 10
    config.train.steps_per_epoch = 50
    config.train.max_steps = 0  # > 0 stops early (smoke runs); the schedule is unchanged
    config.train.optimizer = "sgd"
    config.train.learning_rate = 0.01
    config.train.momentum = 0.9
    config.train.weight_decay = 4e-5
    config.train.decay_depthwise = False
    config.train.global_clipnorm = 0.0  # > 0: gradients rescaled to this global norm at most
    config.train.poly_power = 0.9
    config.train.warmup_steps = 0
    config.train.class_weights = ()  # empty: all classes weigh 1
    config.train.ohem_fraction = 1.0
    config.train.sync_batch_norm = False
    config.train.jit_compile = False  # XLA for the train step (`compile(jit_compile=...)`)
    config.train.bn_momentum = 0.0  # > 0 overrides every BN layer's momentum (short runs)
    config.train.bn_recalibration_batches = 0  # > 0: precise BN before each validation (1 replica)
    config.train.backup_every_steps = 50
    config.train.validation_every_epochs = 1
    config.train.validation_max_images = 0  # 0 = whole validation split
    config.train.num_overlay_images = 3
    config.train.verbose = 1

    config.eval = ml_collections.ConfigDict()
    config.eval.mode = "whole"  # "whole", "multiscale" or "sliding"
    config.eval.scales = (0.5, 0.75, 1.0, 1.25, 1.5, 1.75)
    config.eval.flip = True
    config.eval.crop_size = ()  # sliding window; empty = data.crop_size
    config.eval.stride = ()  # empty = 2/3 of the crop
    config.eval.trimap_widths = ()
    config.eval.trimap_band = "boundaries"  # or "void": dilate void pixels only (DeepLabv3+)
    config.eval.max_images = 0
    return config


def _flatten(node, prefix=""):
    fields = {}
    for key, value in node.items():
        path = f"{prefix}{key}"
        if isinstance(value, ml_collections.ConfigDict | dict) and path not in FREE_FORM:
            fields.update(_flatten(value, path + "."))
        else:
            fields[path] = value
    return fields


def _fail(problems, source):
    raise ValueError(f"Invalid config {source}:\n  - " + "\n  - ".join(problems))


def check_fields(config, source="config"):
    """Raises ValueError listing unknown (with the closest known name) and missing fields."""
    known = _flatten(default_config())
    given = _flatten(config)
    problems = []
    for path in sorted(set(given) - set(known)):
        close = difflib.get_close_matches(path, list(known), n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        problems.append(f"unknown field {path!r}{hint}")
    for path in sorted(set(known) - set(given)):
        problems.append(f"missing field {path!r}")
    if problems:
        _fail(problems, source)


def check_workdir(workdir):
    """Creates `workdir` and checks that a file can be written there."""
    if not workdir:
        raise ValueError("`workdir` must be a non-empty path.")
    try:
        os.makedirs(workdir, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=workdir):
            pass
    except OSError as error:
        raise ValueError(f"workdir {workdir!r} is not writable: {error}") from error


def _data_source_problems(config_data):
    """Problems with `data.name` and the class fields: registered name, folder or TFRecords."""
    from keras_fusionseg import data
    from keras_fusionseg.data.registry import is_tfrecord
    from keras_fusionseg.data.tfrecords import glob_files_or_empty

    name, problems = config_data.name, []
    num_classes, class_names = config_data.num_classes, tuple(config_data.class_names)
    registered = name in data.list_datasets()
    records = not registered and not os.path.isdir(name) and is_tfrecord(name)
    if not isinstance(num_classes, int) or isinstance(num_classes, bool) or num_classes < 0:
        problems.append(f"data.num_classes must be an integer >= 0, received {num_classes!r}")
        return problems
    if not registered and not records and not os.path.isdir(name):
        return [
            f"data.name {name!r} is not a dataset; available: {data.list_datasets()}, a folder "
            "path or a TFRecord file/glob (e.g. '/data/{split}-*.tfrecord')"
        ]
    if registered and name != "synthetic_shapes":
        if not config_data.data_dir or not os.path.isdir(config_data.data_dir):
            problems.append(
                f"data.data_dir {config_data.data_dir!r} must be the folder of dataset {name!r}"
            )
    if registered:
        expected = data.get_dataset_info(name).num_classes
        if num_classes and num_classes != expected:
            problems.append(
                f"data.num_classes {num_classes} differs from dataset {name!r}'s {expected} "
                "(leave it 0 for a registered dataset)"
            )
        return problems
    if records:
        for split in dict.fromkeys((config_data.train_split, config_data.val_split)):
            try:
                pattern = name.format(split=split)
            except (KeyError, IndexError, ValueError):
                problems.append(f"data.name {name!r}: the only placeholder allowed is {{split}}")
                break
            if not glob_files_or_empty(pattern):
                problems.append(
                    f"data.name {name!r}: no TFRecord files match {pattern!r} (split {split!r})"
                )
        if not num_classes and not class_names:
            problems.append(
                f"data.num_classes (or data.class_names) is required: TFRecords {name!r} do "
                "not record their classes"
            )
    try:
        data.get_dataset_info(
            name, num_classes=num_classes or None, class_names=class_names or None
        )
    except ValueError as error:
        if not records or num_classes or class_names:
            problems.append(f"data: {error}")
    return problems


def _class_weight_problems(config):
    """`train.class_weights` must hold one non-negative weight per class of the dataset."""
    from keras_fusionseg import data

    weights = tuple(config.train.class_weights)
    if not weights:
        return []
    try:
        num_classes = data.get_dataset_info(
            config.data.name,
            num_classes=config.data.num_classes or None,
            class_names=tuple(config.data.class_names) or None,
        ).num_classes
    except ValueError:
        return []  # the data problem itself is reported by `_data_source_problems`
    problems = []
    if len(weights) != num_classes:
        problems.append(
            f"train.class_weights has {len(weights)} weights but data {config.data.name!r} has "
            f"{num_classes} classes (one weight per class, in class-id order)"
        )
    if any(not isinstance(w, int | float) or isinstance(w, bool) or w < 0 for w in weights):
        problems.append(f"train.class_weights must be numbers >= 0, received {weights!r}")
    return problems


def accepted_options(builder, reserved=()):
    """Keyword names `builder` accepts (following `forwards_options_to` past a `**options`),
    without the `reserved` ones `build` passes itself; None when they cannot be known."""
    names, target = set(), builder
    while target is not None:
        parameters = inspect.signature(target).parameters.values()
        names |= {p.name for p in parameters if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)}
        if not any(p.kind == p.VAR_KEYWORD for p in parameters):
            return sorted(names - set(reserved))
        target = getattr(target, "forwards_options_to", None)
    return None


def _option_problems(path, options, builder, what, reserved):
    accepted = accepted_options(builder, reserved)
    if accepted is None:
        return []
    problems = []
    for key in sorted(options):
        if key in reserved:
            problems.append(f"{path} sets {key!r}, which {what} receives from its own field")
        elif key not in accepted:
            close = difflib.get_close_matches(key, accepted, n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            problems.append(
                f"{path} has unknown option {key!r} for {what}{hint}; accepted: {accepted}"
            )
    return problems


def _model_option_problems(config):
    """`model.options` against the model builder, `model.backbone_options` against the
    backbone builder: a typo is reported here instead of as a TypeError mid-build."""
    from keras_fusionseg import backbones, models
    from keras_fusionseg.backbones.registry import get_backbone_spec
    from keras_fusionseg.models.registry import get_model_spec

    if config.model.name not in models.list_models():
        return []
    spec = get_model_spec(config.model.name)
    problems = _option_problems(
        "model.options",
        dict(config.model.options),
        spec.builder,
        f"model {config.model.name!r}",
        ("backbone", "num_classes", "aux_outputs"),
    )
    backbone = config.model.backbone or spec.default_backbone
    if backbone in backbones.list_backbones():
        problems += _option_problems(
            "model.backbone_options",
            dict(config.model.backbone_options),
            get_backbone_spec(backbone).builder,
            f"backbone {backbone!r}",
            ("input_shape", "output_stride"),
        )
    return problems


def validate_config(config, workdir=None, source="config"):
    """Checks every field of `config` (and `workdir`), raising one ValueError listing problems.

    Args:
        config: `ml_collections.ConfigDict` shaped like `default_config()`.
        workdir: optional output folder to create and test for writing.
        source: str naming the config (its file) in error messages.
    """
    from keras_fusionseg import backbones, models

    check_fields(config, source)
    problems = []

    def positive_int(path, value, minimum=1):
        if not isinstance(value, int) or isinstance(value, bool) or value < minimum:
            problems.append(f"{path} must be an integer >= {minimum}, received {value!r}")

    if config.model.name not in models.list_models():
        problems.append(
            f"model.name {config.model.name!r} is not a model; available: {models.list_models()}"
        )
    if config.model.backbone and config.model.backbone not in backbones.list_backbones():
        problems.append(
            f"model.backbone {config.model.backbone!r} is not a backbone; "
            f"available: {backbones.list_backbones()}"
        )
    problems += _model_option_problems(config)
    if config.model.output_stride not in (8, 16, 32):
        problems.append(
            f"model.output_stride must be 8, 16 or 32, received {config.model.output_stride!r}"
        )
    data_problems = _data_source_problems(config.data)
    problems += data_problems
    if not data_problems:
        problems += _class_weight_problems(config)
    if len(tuple(config.data.crop_size)) != 2 or min(config.data.crop_size) < 16:
        problems.append(
            f"data.crop_size must be (height, width) >= 16, received {config.data.crop_size!r}"
        )
    positive_int("data.batch_size", config.data.batch_size)
    positive_int("train.epochs", config.train.epochs)
    positive_int("train.steps_per_epoch", config.train.steps_per_epoch)
    positive_int("train.max_steps", config.train.max_steps, minimum=0)
    positive_int("train.backup_every_steps", config.train.backup_every_steps)
    positive_int("train.validation_every_epochs", config.train.validation_every_epochs)
    positive_int("train.warmup_steps", config.train.warmup_steps, minimum=0)
    if config.train.warmup_steps >= config.train.epochs * config.train.steps_per_epoch:
        problems.append("train.warmup_steps must be smaller than epochs * steps_per_epoch")
    if config.train.optimizer not in OPTIMIZERS:
        problems.append(
            f"train.optimizer must be one of {list(OPTIMIZERS)}, received {config.train.optimizer!r}"
        )
    if not config.train.learning_rate > 0:
        problems.append(f"train.learning_rate must be > 0, received {config.train.learning_rate!r}")
    if not config.train.global_clipnorm >= 0:
        problems.append(
            f"train.global_clipnorm must be >= 0 (0 = off), received {config.train.global_clipnorm!r}"
        )
    if not 0 < config.train.ohem_fraction <= 1:
        problems.append(
            f"train.ohem_fraction must be in (0, 1], received {config.train.ohem_fraction!r}"
        )
    if not 0 <= config.train.bn_momentum < 1:
        problems.append(
            f"train.bn_momentum must be in [0, 1), received {config.train.bn_momentum!r}"
        )
    if not isinstance(config.train.bn_recalibration_batches, int) or (
        config.train.bn_recalibration_batches < 0
    ):
        problems.append(
            "train.bn_recalibration_batches must be an integer >= 0, received "
            f"{config.train.bn_recalibration_batches!r}"
        )
    if config.mixed_precision not in PRECISIONS:
        problems.append(
            f"mixed_precision must be one of {list(PRECISIONS)}, received {config.mixed_precision!r}"
        )
    from keras_fusionseg.evaluation.boundary import BAND_SOURCES
    from keras_fusionseg.evaluation.inference import EVAL_MODES

    if config.eval.mode not in EVAL_MODES:
        problems.append(
            f"eval.mode must be one of {list(EVAL_MODES)}, received {config.eval.mode!r}"
        )
    if config.eval.trimap_band not in BAND_SOURCES:
        problems.append(
            f"eval.trimap_band must be one of {list(BAND_SOURCES)}, "
            f"received {config.eval.trimap_band!r}"
        )
    if problems:
        _fail(problems, source)
    if workdir is not None:
        check_workdir(workdir)
